"""What every ``relay`` command shares: the console pair, the error exits, the option types,
the JSON printer, the ``--label KEY=VALUE`` parser and the API client.

Two ways out of a command, both here:

- :func:`bad_parameter` — the arguments are wrong and nothing has happened yet: typer's usage
  error, exit 2, naming the argument;
- :func:`fail` — the command could not do its work: one red ``error:`` line on stderr, exit 1.

Only typer and rich are imported at module level; whatever a command needs beyond them it
imports inside its function, so that ``relay --help`` stays light.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from relaytrain import CA_CERT_ENV, TOKEN_ENV

if TYPE_CHECKING:
    from relaytrain.api.client import RelayClient

console = Console()
err_console = Console(stderr=True)

# -- option types --------------------------------------------------------------------------------
# The name, environment variable and default of an option are defined here once; a command picks
# the alias whose help text fits it.

DEFAULT_COMMANDER = "http://127.0.0.1:8080"
DEFAULT_DB = "./relay.db"
DEFAULT_WORKDIR = Path("./relay-work")


def _token(help: str) -> Any:
    return typer.Option("--token", envvar=TOKEN_ENV, help=f"{help} Prefer {TOKEN_ENV}: a command line is visible "
                        "to every user of the machine (ps).")


def _workdir(help: str) -> Any:
    return typer.Option("--workdir", envvar="RELAY_WORKDIR", help=help)


def _commander_urls(value: str) -> str:
    """``--commander``: every URL checked (:func:`relaytrain.api.client.commander_urls`) before the command runs."""
    from relaytrain.api.client import commander_urls
    from relaytrain.errors import ConfigError

    try:
        return ",".join(commander_urls(value))
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from exc


CommanderOpt = Annotated[
    str, typer.Option("--commander", envvar="RELAY_COMMANDER", callback=_commander_urls, show_default=True,
                      help="Commander URL; several replicas' URLs separated by commas (the next is tried when "
                           "one does not answer).")
]
CaCertOpt = Annotated[
    Path | None,
    typer.Option("--ca-cert", envvar=CA_CERT_ENV, exists=True, dir_okay=False, readable=True,
                 help="CA certificate to verify an https:// commander with (relay tls init's ca.pem); "
                      "default: the public CAs."),
]
TokenOpt = Annotated[str | None, _token("Bearer token (admin, or worker for workers).")]
AdminTokenOpt = Annotated[str | None, _token("Admin token.")]
ServeTokenOpt = Annotated[str | None, _token("Admin token; required off loopback.")]
StackTokenOpt = Annotated[str | None, _token("Admin token of the stack's commander.")]
DbOpt = Annotated[
    str, typer.Option("--db", envvar="RELAY_DB", help="SQLite path or postgresql+psycopg://… URL.", show_default=True)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
LogLevelOpt = Annotated[str, typer.Option("--log-level", help="Log level.")]
WorkerWorkdirOpt = Annotated[Path, _workdir("Where runs live on this machine.")]
SyncWorkdirOpt = Annotated[Path, _workdir("The worker's workdir (runs/<run_id>/checkpoints/…).")]
StackArg = Annotated[Path, typer.Argument(help="The stack file (stack.yaml).")]


# -- errors --------------------------------------------------------------------------------------


def print_error(message: str) -> None:
    """One red ``error:`` line on stderr; ``message`` is printed as it is (no rich markup)."""
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False)


def print_warning(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)


def fail(message: str, code: int = 1) -> NoReturn:
    """The command failed: print ``error: message`` and exit ``code``."""
    print_error(message)
    raise typer.Exit(code)


def bad_parameter(message: str, hint: str) -> NoReturn:
    """An argument is wrong: typer's usage error (exit 2) naming it, e.g. ``hint="'--to'"``."""
    raise typer.BadParameter(message, param_hint=hint)


@contextmanager
def relay_errors() -> Iterator[None]:
    """Named relaytrain errors raised inside become :func:`fail` (one red line, exit 1)."""
    from relaytrain.errors import RelayError

    try:
        yield
    except RelayError as exc:
        fail(str(exc))


# -- input and output ----------------------------------------------------------------------------


def parse_labels(items: list[str], option: str = "--label") -> dict[str, str]:
    """``["gpu=a100", "zone="]`` → ``{"gpu": "a100", "zone": ""}``; anything without ``=`` or with
    an empty key fails naming ``option``. The value may be empty and may itself contain ``=``."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"{option}: expected KEY=VALUE, got {item!r}")
        labels[key] = value
    return labels


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (anything JSON lacks, e.g. a path, as its ``str``)."""
    console.print_json(json.dumps(data, default=str))


def client(commander: str, token: str | None, ca_cert: Path | None = None) -> RelayClient:
    from relaytrain.api.client import RelayClient

    return RelayClient(commander, token, retries=2, ca_cert=ca_cert)
