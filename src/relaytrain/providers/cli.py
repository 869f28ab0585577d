"""The ``relay`` commands of providers and stacks: ``launch-stack``, ``stack status|down``,
``hosts add|list|rm`` and ``print-lium-command``. Thin: heavy modules are imported inside.

Registered in :mod:`relaytrain.cli` with::

    app.command("launch-stack")(launch_stack_command)
    app.command("print-lium-command")(print_lium_command)
    app.add_typer(stack_app, name="stack")
    app.add_typer(hosts_app, name="hosts")
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)

StackArg = Annotated[Path, typer.Argument(help="The stack file (stack.yaml).")]
TokenOpt = Annotated[
    str | None, typer.Option("--token", envvar="RELAY_TOKEN", help="Admin token of the stack's commander.")
]
CommanderOpt = Annotated[str, typer.Option("--commander", envvar="RELAY_COMMANDER", help="Commander URL.")]
AdminTokenOpt = Annotated[str | None, typer.Option("--token", envvar="RELAY_TOKEN", help="Admin token.")]

stack_app = typer.Typer(help="Inspect or stop what relay launch-stack started.", no_args_is_help=True)
hosts_app = typer.Typer(help="SSH hosts the commander polls for GPUs and starts workers on.", no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    return typer.Exit(1)


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


def _stack(path: Path, token: str | None) -> Any:
    from relaytrain.errors import ConfigError

    from .stack import Stack

    try:
        return Stack(path, token=token)
    except ConfigError as exc:
        raise _fail(str(exc)) from exc


def launch_stack_command(stack_file: StackArg, token: TokenOpt = None) -> None:
    """Start the commander in the background and the workers a stack file asks for, submit its runs,
    and print what was started (JSON: commander pid/log/url; each worker's machine, pid, log, config)."""
    from relaytrain.errors import RelayError

    stack = _stack(stack_file, token)
    try:
        summary = stack.launch()
    except RelayError as exc:
        raise _fail(str(exc)) from exc
    _print_json(summary)


@stack_app.command("status")
def stack_status(stack_file: StackArg, token: TokenOpt = None) -> None:
    """Show the stack's commander, workers (alive, registered, current run), runs and hosts (JSON)."""
    from relaytrain.errors import RelayError

    try:
        _print_json(_stack(stack_file, token).status())
    except RelayError as exc:
        raise _fail(str(exc)) from exc


@stack_app.command("down")
def stack_down(
    stack_file: StackArg,
    remove_machines: Annotated[bool, typer.Option("--remove-machines", help="Also delete the pods.")] = False,
    grace: Annotated[float, typer.Option(min=1, help="Seconds a worker has to checkpoint before SIGKILL.")] = 60.0,
    token: TokenOpt = None,
) -> None:
    """Stop the stack's workers (their runs are checkpointed and re-queued), then its commander."""
    from relaytrain.errors import RelayError

    try:
        _print_json(_stack(stack_file, token).down(remove_machines=remove_machines, grace_s=grace))
    except RelayError as exc:
        raise _fail(str(exc)) from exc


# -- hosts -------------------------------------------------------------------------------------


def _client(commander: str, token: str | None) -> Any:
    from relaytrain.api.client import RelayClient

    return RelayClient(commander, token, retries=2)


def _call(commander: str, token: str | None, method: str, path: str, **kwargs: Any) -> Any:
    from relaytrain.errors import RelayError

    try:
        with _client(commander, token) as client:
            return client.request(method, path, **kwargs)
    except RelayError as exc:
        raise _fail(str(exc)) from exc


@hosts_app.command("add")
def hosts_add(
    name: Annotated[str, typer.Argument(help="A name for the host.")],
    address: Annotated[str, typer.Option(help="IP address or DNS name.")],
    key_path: Annotated[Path, typer.Option(help="Private key file (on the commander's machine).")],
    port: Annotated[int, typer.Option(min=1, max=65535, help="SSH port.")] = 22,
    user: Annotated[str, typer.Option(help="SSH user.")] = "root",
    label: Annotated[list[str], typer.Option("--label", help="KEY=VALUE for its workers; repeatable.")] = [],  # noqa: B006
    price_per_hour: Annotated[float | None, typer.Option(min=0, help="What it costs, $/hour.")] = None,
    python: Annotated[str, typer.Option(help="Python with relaytrain installed, on the host.")] = "python3",
    workdir: Annotated[str, typer.Option(help="Folder for workers on the host (relative: to home).")] = "relay",
    known_hosts: Annotated[Path | None, typer.Option(help="known_hosts file to verify its host key.")] = None,
    commander: CommanderOpt = "http://127.0.0.1:8080",
    token: AdminTokenOpt = None,
) -> None:
    """Add (or change) a host: the commander polls its GPUs and may start workers there."""
    from pydantic import ValidationError

    from relaytrain.config import SshHostConfig

    labels = {}
    for item in label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _fail(f"--label: expected KEY=VALUE, got {item!r}")
        labels[key] = value
    try:
        spec = SshHostConfig(name=name, address=address, port=port, user=user, key_path=str(key_path.resolve()),
                             known_hosts=str(known_hosts.resolve()) if known_hosts else None, labels=labels,
                             price_per_hour=price_per_hour, python=python, workdir=workdir)
    except ValidationError as exc:
        raise _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from exc
    host = _call(commander, token, "PUT", f"/api/v1/hosts/{name}", json=spec.model_dump(exclude={"name"}))
    console.print(f"host [bold]{host['name']}[/bold]: {host['user']}@{host['address']}:{host['port']}"
                  " (its GPUs are read at the next poll)")


@hosts_app.command("list")
def hosts_list(
    commander: CommanderOpt = "http://127.0.0.1:8080",
    token: AdminTokenOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List hosts: reachable or not (and why), GPUs, free GPUs, workers started there."""
    items = _call(commander, token, "GET", "/api/v1/hosts")
    if as_json:
        _print_json(items)
        return
    table = Table("host", "address", "reachable", "GPUs", "free", "workers", "labels", "error")
    for h in items:
        reachable = "?" if h["reachable"] is None else ("yes" if h["reachable"] else "[red]no[/red]")
        if not h["enabled"]:
            reachable += " (disabled)"
        gpus = ", ".join(f"{g['index']}:{g['name']}" for g in h["gpus"]) or "-"
        table.add_row(h["name"], f"{h['user']}@{h['address']}:{h['port']}", reachable, gpus,
                      ",".join(map(str, h["free_gpus"])) or "-", ", ".join(w["worker_id"] for w in h["workers"]) or "-",
                      ",".join(f"{k}={v}" for k, v in h["labels"].items()) or "-", (h["last_error"] or "")[:80])
    console.print(table if items else "no hosts: add one with relay hosts add")


@hosts_app.command("rm")
def hosts_rm(
    name: Annotated[str, typer.Argument(help="The host's name.")],
    force: Annotated[bool, typer.Option("--force", help="Even while workers started there are alive.")] = False,
    commander: CommanderOpt = "http://127.0.0.1:8080",
    token: AdminTokenOpt = None,
) -> None:
    """Forget a host (its workers, if any, keep running until stopped)."""
    _call(commander, token, "DELETE", f"/api/v1/hosts/{name}", params={"force": str(force).lower()})
    console.print(f"host {name} removed")


# -- lium --------------------------------------------------------------------------------------


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

    from relaytrain.config import LiumProviderConfig

    from .lium import lium_up_command

    fields: dict[str, Any] = {"type": "lium"}
    name = "relay"
    if stack_file is not None:
        stack = _stack(stack_file, None)
        if stack.config.provider.type != "lium":
            raise _fail(f"{stack_file}: provider.type is {stack.config.provider.type}, not lium")
        fields = stack.config.provider.model_dump()
        name = stack.config.provider.pod_name or stack.config.name
        commander_url = commander_url or stack.config.commander.worker_url
    given = {"template_id": template_id, "executor": executor, "gpu_type": gpu, "gpu_count": count, "volume": volume,
             "ttl": ttl}
    fields.update({k: v for k, v in given.items() if v is not None})
    try:
        config = LiumProviderConfig.model_validate(fields)
    except ValidationError as exc:
        raise _fail("; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}"
                              for e in exc.errors())) from exc
    pod = pod_name or f"{name}-worker-0"
    env = {"COMMANDER_URL": commander_url or "http://<commander-public-ip>:8080", "WORKER_ID": pod}
    argv = lium_up_command(config, pod_name=pod, env=env)
    line = " ".join(shlex.quote(a) for a in argv)
    console.print(line + ' -e "RELAY_TOKEN=$RELAY_TOKEN"', soft_wrap=True, markup=False, highlight=False)
