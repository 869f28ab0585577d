"""``relay serve`` and ``relay db upgrade``: running the commander and migrating its database
(its tokens: :mod:`.tokens`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from relaytrain import UNSCHEDULABLE_AFTER_S

from .common import (
    DEFAULT_DB,
    DbOpt,
    LogLevelOpt,
    ServeTokenOpt,
    bad_parameter,
    console,
    err_console,
    fail,
    print_warning,
    relay_errors,
)

db_app = typer.Typer(help="Manage the commander's database.", no_args_is_help=True)


def serve(
    db: DbOpt = DEFAULT_DB,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to bind.")] = 8080,
    token: ServeTokenOpt = None,
    tls_cert: Annotated[Path | None, typer.Option(
        "--tls-cert", exists=True, dir_okay=False, readable=True,
        help="Serve https with this certificate (PEM; relay tls init's server.pem); needs --tls-key.")] = None,
    tls_key: Annotated[Path | None, typer.Option(
        "--tls-key", exists=True, dir_okay=False, readable=True,
        help="The certificate's private key (PEM; relay tls init's server-key.pem); needs --tls-cert.")] = None,
    insecure_http: Annotated[bool, typer.Option(
        "--insecure-http", help="Serve plain http off loopback (tokens cross the network in clear): only on a "
        "network you trust.")] = False,
    sweep_interval: Annotated[float, typer.Option(min=0.05, help=(
        "Seconds between lease-expiry sweeps and beats; a silence over 2 × this + 2 s is an outage, "
        "whose running leases are extended by its length (docs/commander.md)."))] = 5.0,
    log_level: LogLevelOpt = "info",
    poll_hosts: Annotated[bool, typer.Option("--poll-hosts", help="Poll SSH hosts' GPUs and start workers on them.")]
    = False,
    public_url: Annotated[str | None, typer.Option(help="URL workers started over SSH reach this commander at.")]
    = None,
    ca_cert: Annotated[Path | None, typer.Option(
        "--ca-cert", exists=True, dir_okay=False, readable=True,
        help="With --poll-hosts: the CA certificate workers started over SSH verify this commander with (copied "
        "to them); default: the public CAs.")] = None,
    poll_interval: Annotated[float, typer.Option(min=0.2, help="Seconds between GPU polls.")] = 30.0,
    autoscale: Annotated[bool, typer.Option("--autoscale/--no-autoscale",
                                            help="With --poll-hosts: start workers for queued runs.")] = True,
    unschedulable_after: Annotated[float, typer.Option(
        min=0, help="Seconds a queued run waits for a live worker or SSH host that fits (GPUs, labels, kind) "
                    "before it is shown unschedulable, with the reason.")] = UNSCHEDULABLE_AFTER_S,
) -> None:
    """Run the commander: migrate the database, then serve the API under /api/v1 (https with --tls-cert/--tls-key).

    Off loopback it needs --token, and TLS (relay tls init makes the files) or --insecure-http.
    """
    from relaytrain.netaddr import is_loopback, url_host

    if (tls_cert is None) != (tls_key is None):
        given, missing = ("--tls-cert", "--tls-key") if tls_key is None else ("--tls-key", "--tls-cert")
        bad_parameter(f"{given} needs {missing} too (both or neither)", f"'{missing}'")
    tls = tls_cert is not None
    if ca_cert is not None and not poll_hosts:
        bad_parameter("is for the workers --poll-hosts starts; give --poll-hosts too", "'--ca-cert'")
    if tls and insecure_http:
        bad_parameter("cannot be combined with --tls-cert/--tls-key", "'--insecure-http'")
    if not is_loopback(host):
        if not token:
            fail(f"--host {host} is not a loopback address: give --token (or RELAY_TOKEN) to serve off this machine")
        if not tls and not insecure_http:
            fail(f"--host {host} is not a loopback address: without TLS every token (and run config) would cross "
                 "the network in clear. Make a certificate with `relay tls init DIR --host NAME --ip ADDR` and give "
                 "--tls-cert DIR/server.pem --tls-key DIR/server-key.pem (or --insecure-http on a network you trust)")
    if tls:
        from relaytrain.tls import check_server_files

        with relay_errors():
            check_server_files(tls_cert, tls_key)
    import logging

    import uvicorn

    from relaytrain.commander.app import create_app
    from relaytrain.commander.store import Store

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = Store(db)
    store.upgrade()
    if not token:
        print_warning("no --token: the API is open to anyone on this machine")
    if insecure_http and not is_loopback(host):
        print_warning(f"--insecure-http: tokens and run configs cross the network to {host} in clear")
    scheme = "https" if tls else "http"
    base = f"{scheme}://{url_host(host)}:{port}"
    err_console.print(f"commander on {base} over {store.describe()}; dashboard at {base}/", soft_wrap=True)
    hosts = None
    if poll_hosts:
        from relaytrain.commander.hosts import serve_settings

        url = public_url or f"{scheme}://{'127.0.0.1' if host in ('0.0.0.0', '::') else url_host(host)}:{port}"
        hosts = serve_settings(store, public_url=url, admin_token=token or None, poll_interval_s=poll_interval,
                               autoscale=autoscale, ca_cert=str(ca_cert.resolve()) if ca_cert else None)
    api = create_app(store, admin_token=token or None, sweep_interval_s=sweep_interval, hosts=hosts,
                     unschedulable_after_s=unschedulable_after)
    uvicorn.run(api, host=host, port=port, log_level=log_level.lower(), access_log=False,
                ssl_certfile=str(tls_cert) if tls else None, ssl_keyfile=str(tls_key) if tls else None)


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = DEFAULT_DB) -> None:
    """Apply the database migrations (relay serve also does this at start)."""
    from relaytrain.commander.store import Store

    store = Store(db)
    store.upgrade()
    console.print(f"{store.describe()} is at revision {store.revision()}")
    store.close()
