"""``relay tls init``: the CA and the server certificate of a commander served over https
(docs/deploy.md, "TLS")."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import bad_parameter, console, relay_errors

tls_app = typer.Typer(help="TLS certificates for a commander reached over the network.", no_args_is_help=True)


@tls_app.command("init")
def tls_init(
    directory: Annotated[Path, typer.Argument(help="Folder to write ca.pem, ca-key.pem, server.pem and "
                                                   "server-key.pem into (created, or narrowed, to mode 0700).")],
    host: Annotated[list[str], typer.Option(
        "--host", help="A DNS name clients reach the commander by; repeatable. With neither --host nor --ip: "
        "localhost and 127.0.0.1.")] = [],  # noqa: B006
    ip: Annotated[list[str], typer.Option(
        "--ip", help="An IP address clients reach the commander at; repeatable. With neither --host nor --ip: "
        "localhost and 127.0.0.1.")] = [],  # noqa: B006
    days: Annotated[int, typer.Option(min=1, max=3650, help="How long the server certificate is valid (the CA: 10 "
                                                            "years).")] = 365,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files (every worker then needs the new "
                                                        "ca.pem).")] = False,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to show in the printed commands.")] = 8080,
) -> None:
    """Create a CA and a server certificate it signs, for `relay serve --tls-cert/--tls-key`; clients
    verify the commander with the CA's certificate (`--ca-cert ca.pem`). Keys are written 0600;
    existing files are kept unless --force."""
    import ipaddress

    from relaytrain.netaddr import is_host, url_host
    from relaytrain.tls import DEFAULT_HOSTS, DEFAULT_IPS
    from relaytrain.tls.certs import init_tls_dir

    addresses = []
    for value in ip:
        try:
            addresses.append(ipaddress.ip_address(value.strip("[]")))
        except ValueError:
            bad_parameter(f"{value!r} is not an IP address (give DNS names with --host)", "'--ip'")
    for value in host:
        if not is_host(value) or _is_ip(value):
            bad_parameter(f"{value!r} is not a DNS name (no scheme, port or path; give addresses with --ip)",
                          "'--host'")
    hosts = list(dict.fromkeys(h.rstrip(".").lower() for h in host))
    addresses = list(dict.fromkeys(addresses))
    if not hosts and not addresses:
        hosts, addresses = list(DEFAULT_HOSTS), [ipaddress.ip_address(a) for a in DEFAULT_IPS]
    with relay_errors():
        files = init_tls_dir(directory, hosts=hosts, ips=addresses, days=days, force=force)
    names = ", ".join([*hosts, *map(str, addresses)])
    console.print(f"wrote {files.ca_cert} (give it to every client), {files.ca_key} (keep it here: 0600), "
                  f"{files.server_cert} and {files.server_key} (0600) for {names}, valid {days} days", soft_wrap=True,
                  markup=False, highlight=False)
    reach = hosts[0] if hosts else url_host(str(addresses[0]))
    console.print("serve:", soft_wrap=True)
    console.print(f"  relay serve --host 0.0.0.0 --port {port} --token \"$RELAY_TOKEN\" "
                  f"--tls-cert {files.server_cert.resolve()} --tls-key {files.server_key.resolve()}",
                  soft_wrap=True, markup=False, highlight=False)
    console.print("clients (copy ca.pem to their machines; RELAY_CA_CERT works too):", soft_wrap=True)
    console.print(f"  relay worker --commander https://{reach}:{port} --ca-cert {files.ca_cert.resolve()}\n"
                  f"  relay status --commander https://{reach}:{port} --ca-cert {files.ca_cert.resolve()}",
                  soft_wrap=True, markup=False, highlight=False)


def _is_ip(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(value.strip("[]"))
        return True
    except ValueError:
        return False
