"""``relay serve``, ``relay db upgrade`` and ``relay token create``: running and administering
the commander."""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from .common import (
    DEFAULT_COMMANDER,
    DEFAULT_DB,
    CommanderOpt,
    DbOpt,
    JsonOpt,
    LogLevelOpt,
    ServeTokenOpt,
    TokenOpt,
    client,
    console,
    err_console,
    fail,
    print_json,
    print_warning,
)

token_app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)
db_app = typer.Typer(help="Manage the commander's database.", no_args_is_help=True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    db: DbOpt = DEFAULT_DB,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to bind.")] = 8080,
    token: ServeTokenOpt = None,
    sweep_interval: Annotated[float, typer.Option(min=0.05, help="Seconds between lease-expiry sweeps.")] = 5.0,
    log_level: LogLevelOpt = "info",
    poll_hosts: Annotated[bool, typer.Option("--poll-hosts", help="Poll SSH hosts' GPUs and start workers on them.")]
    = False,
    public_url: Annotated[str | None, typer.Option(help="URL workers started over SSH reach this commander at.")]
    = None,
    poll_interval: Annotated[float, typer.Option(min=0.2, help="Seconds between GPU polls.")] = 30.0,
    autoscale: Annotated[bool, typer.Option("--autoscale/--no-autoscale",
                                            help="With --poll-hosts: start workers for queued runs.")] = True,
) -> None:
    """Run the commander: migrate the database, then serve the API under /api/v1."""
    if not token and not _is_loopback(host):
        fail(f"--host {host} is not a loopback address: give --token (or RELAY_TOKEN) to serve off this machine")
    import logging

    import uvicorn

    from relaytrain.commander.app import create_app
    from relaytrain.commander.store import Store

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = Store(db)
    store.upgrade()
    if not token:
        print_warning("no --token: the API is open to anyone on this machine")
    err_console.print(f"commander on http://{host}:{port} over {store.describe()}; dashboard at http://{host}:{port}/",
                      soft_wrap=True)
    hosts = None
    if poll_hosts:
        from relaytrain.commander.hosts import serve_settings

        url = public_url or f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        hosts = serve_settings(store, public_url=url, admin_token=token or None, poll_interval_s=poll_interval,
                               autoscale=autoscale)
    api = create_app(store, admin_token=token or None, sweep_interval_s=sweep_interval, hosts=hosts)
    uvicorn.run(api, host=host, port=port, log_level=log_level.lower(), access_log=False)


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = DEFAULT_DB) -> None:
    """Apply the database migrations (relay serve also does this at start)."""
    from relaytrain.commander.store import Store

    store = Store(db)
    store.upgrade()
    console.print(f"{store.describe()} is at revision {store.revision()}")
    store.close()


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="A name to recognise the token by.")] = "worker",
    scope: Annotated[str, typer.Option(help="worker (worker endpoints only), rollout (a rollout worker's "
                                            "endpoints only), viewer (read-only: what the dashboard "
                                            "reads, configs redacted) or admin.")] = "worker",
    commander: CommanderOpt = DEFAULT_COMMANDER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a token (needs the admin token); it is printed once and stored hashed."""
    from typing import get_args

    from relaytrain.api.models import TokenScope

    scopes = get_args(TokenScope)
    if scope not in scopes:
        fail(f"--scope: must be one of {', '.join(scopes)}, not {scope!r}")
    with client(commander, token) as api:
        created = api.create_token(name, scope)
    if as_json:
        print_json(created.model_dump(mode="json"))
        return
    console.print(created.token, soft_wrap=True)
