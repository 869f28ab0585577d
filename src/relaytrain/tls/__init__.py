"""TLS between the commander and its clients: the file layout ``relay tls init`` writes, the
server's check of its certificate and key at start, the clients' SSL context, and the words a
certificate failure is reported in.

Standard library only, so that the API client (and ``relay --help``) need not import
``cryptography``; making certificates is :mod:`relaytrain.tls.certs`.

A commander on the open internet serves https with a certificate of its own small CA; every client
(``relay`` commands, workers, rollout workers) is given that CA's certificate (``--ca-cert`` /
``RELAY_CA_CERT``) and verifies the commander against it, hostname included. A client given no CA
verifies against the public CAs, as httpx does by default (certifi's bundle, or ``SSL_CERT_FILE``):
a commander behind a certificate from a public CA, a reverse proxy's say.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from relaytrain.errors import TlsError

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SERVER_CERT = "server.pem"
SERVER_KEY = "server-key.pem"
"""The files of a TLS folder (``relay tls init DIR``): the CA's certificate (what clients get) and key
(kept by the operator, never copied), the server's certificate and key (what ``relay serve`` gets)."""

DEFAULT_HOSTS = ("localhost",)
DEFAULT_IPS = ("127.0.0.1",)
"""The subjectAltNames of a server certificate when ``relay tls init`` is given no --host and no --ip."""

CA_HINT = ("give --ca-cert (or RELAY_CA_CERT) the CA certificate that signed the commander's "
           "(relay tls init wrote ca.pem)")
NAME_HINT = ("use a URL whose host the certificate names, or make one that names it "
             "(relay tls init --host NAME --ip ADDR)")
_NAME_MISMATCH = (62, 64)
"""OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH: the CA is trusted, the name is wrong."""


def client_context(ca_cert: str | Path | None) -> ssl.SSLContext | bool:
    """What a client verifies the commander with (httpx's ``verify=``): an SSL context trusting only
    ``ca_cert``, or ``True`` (the public CAs) when there is none. Hostnames are always checked."""
    if not ca_cert:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_cert))
    except FileNotFoundError as exc:
        raise TlsError(f"--ca-cert {ca_cert}: no such file") from exc
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"--ca-cert {ca_cert}: not a readable PEM certificate ({exc})") from exc


def check_server_files(cert: Path, key: Path) -> None:
    """Raise :class:`TlsError` naming the flag unless ``cert`` is a PEM certificate and ``key`` its
    private key: checked before the commander binds, not at the first handshake."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(cert))
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"--tls-cert {cert}: not a readable PEM certificate ({exc})") from exc
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"--tls-key {key}: not a readable private key of the certificate --tls-cert {cert} "
                       f"({exc})") from exc


def verification_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind ``exc`` (an httpx error wraps the ssl one), if any."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def verification_error(url: str, failure: ssl.SSLCertVerificationError) -> TlsError:
    """The error a client raises when the commander at ``url`` presented a certificate it cannot trust."""
    reason = (failure.verify_message or failure.reason or str(failure)).rstrip(".")
    hint = NAME_HINT if failure.verify_code in _NAME_MISMATCH else CA_HINT
    return TlsError(f"the commander at {url}: certificate verify failed: {reason}; {hint}")
