"""``relay hosts add|list|rm``: the SSH hosts the commander polls for GPUs and starts workers on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .common import (
    DEFAULT_COMMANDER,
    AdminTokenOpt,
    CaCertOpt,
    CommanderOpt,
    JsonOpt,
    client,
    console,
    fail,
    parse_labels,
    print_json,
    relay_errors,
)
from .render import print_hosts

hosts_app = typer.Typer(help="SSH hosts the commander polls for GPUs and starts workers on.", no_args_is_help=True)


def _call(commander: str, token: str | None, ca_cert: Path | None, method: str, path: str, **kwargs: Any) -> Any:
    with relay_errors(), client(commander, token, ca_cert) as api:
        return api.request(method, path, **kwargs)


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
    commander: CommanderOpt = DEFAULT_COMMANDER,
    ca_cert: CaCertOpt = None,
    token: AdminTokenOpt = None,
) -> None:
    """Add (or change) a host: the commander polls its GPUs and may start workers there."""
    from pydantic import ValidationError

    from relaytrain.config import SshHostConfig, validation_error_lines

    labels = parse_labels(label)
    try:
        spec = SshHostConfig(name=name, address=address, port=port, user=user, key_path=str(key_path.resolve()),
                             known_hosts=str(known_hosts.resolve()) if known_hosts else None, labels=labels,
                             price_per_hour=price_per_hour, python=python, workdir=workdir)
    except ValidationError as exc:
        fail("; ".join(validation_error_lines(exc)))
    host = _call(commander, token, ca_cert, "PUT", f"/api/v1/hosts/{name}", json=spec.model_dump(exclude={"name"}))
    console.print(f"host [bold]{host['name']}[/bold]: {host['user']}@{host['address']}:{host['port']}"
                  " (its GPUs are read at the next poll)")


@hosts_app.command("list")
def hosts_list(
    commander: CommanderOpt = DEFAULT_COMMANDER,
    ca_cert: CaCertOpt = None,
    token: AdminTokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List hosts: reachable or not (and why), GPUs, free GPUs, workers started there."""
    items = _call(commander, token, ca_cert, "GET", "/api/v1/hosts")
    if as_json:
        print_json(items)
        return
    print_hosts(items)


@hosts_app.command("rm")
def hosts_rm(
    name: Annotated[str, typer.Argument(help="The host's name.")],
    force: Annotated[bool, typer.Option("--force", help="Even while workers started there are alive.")] = False,
    commander: CommanderOpt = DEFAULT_COMMANDER,
    ca_cert: CaCertOpt = None,
    token: AdminTokenOpt = None,
) -> None:
    """Forget a host (its workers, if any, keep running until stopped)."""
    _call(commander, token, ca_cert, "DELETE", f"/api/v1/hosts/{name}", params={"force": str(force).lower()})
    console.print(f"host {name} removed")
