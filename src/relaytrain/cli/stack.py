"""``relay launch-stack``, ``relay stack status|down`` and ``relay print-lium-command``: starting,
inspecting and stopping what a stack file describes (:mod:`relaytrain.providers.stack`)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import StackArg, StackTokenOpt, console, fail, print_json, print_warning, relay_errors

stack_app = typer.Typer(help="Inspect or stop what relay launch-stack started.", no_args_is_help=True)


def _stack(path: Path, token: str | None) -> Any:
    from relaytrain.errors import ConfigError
    from relaytrain.providers.stack import Stack

    try:
        return Stack(path, token=token)
    except ConfigError as exc:
        fail(str(exc))


def launch_stack_command(stack_file: StackArg, token: StackTokenOpt = None) -> None:
    """Start the commander in the background and the workers a stack file asks for, submit its runs,
    and print what was started (JSON: commander pid/log/url; each worker's machine, pid, log, config)."""
    stack = _stack(stack_file, token)
    with relay_errors():
        summary = stack.launch()
    print_json(summary)


@stack_app.command("status")
def stack_status(stack_file: StackArg, token: StackTokenOpt = None) -> None:
    """Show the stack's commander, workers (alive, registered, current run), runs and hosts (JSON)."""
    with relay_errors():
        print_json(_stack(stack_file, token).status())


@stack_app.command("down")
def stack_down(
    stack_file: StackArg,
    remove_machines: Annotated[bool, typer.Option("--remove-machines", help="Also delete the pods.")] = False,
    grace: Annotated[float, typer.Option(min=1, help="Seconds a worker has to checkpoint before SIGKILL.")] = 60.0,
    token: StackTokenOpt = None,
) -> None:
    """Stop the stack's workers (their runs are checkpointed and re-queued), then its commander."""
    with relay_errors():
        print_json(_stack(stack_file, token).down(remove_machines=remove_machines, grace_s=grace))


def print_lium_command(
    stack_file: Annotated[Path | None, typer.Argument(help="Take the lium provider section of this stack.")] = None,
    template_id: Annotated[str | None, typer.Option(help="Template (an image with relaytrain).")] = None,
    pod_name: Annotated[str | None, typer.Option(help="Pod name; also the worker id.")] = None,
    executor: Annotated[str | None, typer.Option(help="Executor id or HUID.")] = None,
    gpu: Annotated[str | None, typer.Option(help="GPU type, when no executor is named.")] = None,
    count: Annotated[int | None, typer.Option(min=1, help="GPUs per pod.")] = None,
    volume: Annotated[str | None, typer.Option(help="'id:<HUID>' or 'new:name=<NAME>'.")] = None,
    ttl: Annotated[str | None, typer.Option(help="Remove the pod after this long, e.g. 6h.")] = None,
    commander_url: Annotated[str | None, typer.Option(help="URL the worker reaches the commander at.")] = None,
) -> None:
    """Print the ``lium up`` line that rents a worker pod by hand; the image's entrypoint starts
    ``relay worker`` from COMMANDER_URL, RELAY_TOKEN and WORKER_ID (the token is read from your shell)."""
    from pydantic import ValidationError

    from relaytrain.config import LiumProviderConfig, validation_error_lines
    from relaytrain.providers.lium import lium_up_command

    fields: dict[str, Any] = {"type": "lium"}
    name = "relay"
    ca_cert = None
    if stack_file is not None:
        stack = _stack(stack_file, None)
        if stack.config.provider.type != "lium":
            fail(f"{stack_file}: provider.type is {stack.config.provider.type}, not lium")
        fields = stack.config.provider.model_dump()
        name = stack.config.provider.pod_name or stack.config.name
        commander_url = commander_url or stack.config.commander.worker_url
        ca_cert = stack.ca_cert
    given = {"template_id": template_id, "executor": executor, "gpu_type": gpu, "gpu_count": count, "volume": volume,
             "ttl": ttl}
    fields.update({k: v for k, v in given.items() if v is not None})
    try:
        config = LiumProviderConfig.model_validate(fields)
    except ValidationError as exc:
        fail("; ".join(validation_error_lines(exc, top="options")))
    pod = pod_name or f"{name}-worker-0"
    env = {"COMMANDER_URL": commander_url or "http://<commander-public-ip>:8080", "WORKER_ID": pod}
    argv = lium_up_command(config, pod_name=pod, env=env)
    line = " ".join(shlex.quote(a) for a in argv)
    console.print(line + ' -e "RELAY_TOKEN=$RELAY_TOKEN"', soft_wrap=True, markup=False, highlight=False)
    if ca_cert:
        print_warning(f"the pod verifies the commander with {ca_cert}: copy it into the pod and set RELAY_CA_CERT "
                      "to its path there (docs/deploy.md, TLS)")
