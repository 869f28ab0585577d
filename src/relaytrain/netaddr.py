"""The address other machines reach this one by: what a GRPO trainer advertises for its rollout
manager (DESIGN §11) when no ``--advertise-host`` is given (``RELAY_ADVERTISE_HOST`` empty).

The default is the address of this machine's interface that routes to a given peer (the
commander): a UDP socket is connected to the peer, which picks the route and the source address
without sending a packet, and the socket's own address is read. Behind NAT or a port mapping that
address is private; then the worker's ``--advertise-host`` names the public one.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?")


def is_host(host: str) -> bool:
    """Whether ``host`` is a DNS name or an IP address (IPv6 bare or in brackets): something to
    advertise, with no scheme, port or path."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
        return True
    except ValueError:
        return bare == host and _DNS_NAME.fullmatch(host) is not None


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server on this machine (``localhost``, 127.0.0.0/8, ``::1``):
    the line between local use and a commander other machines reach (and must reach over TLS)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host[1:-1] if host.startswith("[") else host).is_loopback
    except ValueError:
        return False


def route_address(host: str, port: int = 80) -> str:
    """The IP address of this machine's interface that routes to ``host`` (no packet is sent).
    Raises ``OSError`` when ``host`` does not resolve or no route leads there."""
    family, _, _, _, peer = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(peer)
        return probe.getsockname()[0]


def address_towards(url: str) -> str:
    """:func:`route_address` of the host of ``url`` (``http://commander:8080``, say)."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise OSError(f"{url!r} names no host")
    return route_address(parts.hostname, parts.port or _DEFAULT_PORTS.get(parts.scheme, 80))


def url_host(host: str) -> str:
    """``host`` as it goes in a URL: an IPv6 address in brackets, anything else as it is."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
