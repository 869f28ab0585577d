"""The ``relay`` command: one module per group of commands, registered here in the order
``relay --help`` lists them.

========================  ==========================================================
module                    commands
========================  ==========================================================
:mod:`.commander`         ``serve``, ``db upgrade``
:mod:`.tokens`            ``token create|list|revoke``
:mod:`.runs`              ``submit``, ``runs``, ``status``, ``cancel``, ``eval``, ``resume``,
                          ``checkpoints``, ``logs``
:mod:`.metrics`           ``metrics``, ``report``
:mod:`.worker`            ``worker``, ``workers``
:mod:`.rollout`           ``rollout-worker``
:mod:`.train`             ``train``, ``export``, ``demo``
:mod:`.sync`              ``sync …``, ``push-latest``
:mod:`.stack`             ``launch-stack``, ``stack status|down``, ``print-lium-command``
:mod:`.hosts`             ``hosts add|list|rm``
:mod:`.tls`               ``tls init``
:mod:`.common`            the console pair, ``fail``, the option types, JSON, ``--label``
:mod:`.render`            tables and progress
========================  ==========================================================

Thin: a command parses and validates its arguments, then imports the heavy part it needs, so
``relay --help`` imports neither torch, the stores, the providers nor the commander's web stack
(``tests/unit/test_torch_free.py`` holds the list of what it may import).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from relaytrain import __version__
from relaytrain.errors import RelayError

from . import commander, hosts, metrics, rollout, runs, stack, sync, tls, tokens, train, worker
from .common import console, print_error

app = typer.Typer(
    name="relay",
    help="relaytrain: LLM post-training on unreliable GPUs. Runs are leased to workers and survive their machines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        console.print(f"relaytrain {__version__}")
        raise typer.Exit()


app.command()(commander.serve)
app.command()(runs.submit)
app.command()(runs.runs)
app.command()(runs.status)
app.command()(runs.cancel)
app.command("eval")(runs.eval_)
app.command()(runs.resume)
app.command()(runs.checkpoints)
app.command()(metrics.metrics)
app.command()(metrics.report)
app.command()(worker.worker)
app.command()(worker.workers)
app.command("rollout-worker")(rollout.rollout_worker)
app.command()(runs.logs)
app.command(**train.TRAIN_SETTINGS)(train.train)
app.command()(train.export)
app.command()(train.demo)
app.command("push-latest")(sync.push_latest_command)
app.command("launch-stack")(stack.launch_stack_command)
app.command("print-lium-command")(stack.print_lium_command)
app.add_typer(tokens.token_app, name="token")
app.add_typer(commander.db_app, name="db")
app.add_typer(sync.sync_app, name="sync")
app.add_typer(stack.stack_app, name="stack")
app.add_typer(hosts.hosts_app, name="hosts")
app.add_typer(tls.tls_app, name="tls")


def main() -> None:
    """Entry point of the console script: named errors become one red line and exit 1."""
    try:
        app()
    except RelayError as exc:
        print_error(str(exc))
        sys.exit(1)
