"""``relay tls init``: a small CA of one's own and a server certificate it signs, for a commander
reached by rented machines over the internet (docs/deploy.md, "TLS").

A CA of its own rather than one self-signed server certificate: clients trust the CA
(``ca.pem``), so the server certificate can be renewed (a new host name, a new year) without
touching a single worker. ECDSA P-256 keys with SHA-256: supported by every TLS stack the clients
use, and fast to make. The keys are written 0600 in a folder made 0700, each file atomically, and
nothing is written at all while one of the four files exists (unless ``force``): a CA replaced by
accident would leave every worker unable to verify the commander.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from relaytrain.checkpoint import atomic_write_bytes
from relaytrain.errors import TlsError

from . import CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY

CA_DAYS = 3650
"""How long the CA is valid (10 years), or the server certificate's ``days`` if that is longer."""
SERVER_DAYS = 365
"""How long a server certificate is valid by default (``relay tls init --days``)."""
KEY_MODE = 0o600
DIR_MODE = 0o700
_BACKDATE = dt.timedelta(minutes=5)
"""Certificates start a little in the past, so a client whose clock lags a minute accepts them."""


@dataclass(frozen=True)
class TlsFiles:
    """The four files of a TLS folder."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_dir(cls, directory: Path) -> TlsFiles:
        return cls(directory / CA_CERT, directory / CA_KEY, directory / SERVER_CERT, directory / SERVER_KEY)

    def all(self) -> list[Path]:
        return [self.ca_cert, self.ca_key, self.server_cert, self.server_key]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "relaytrain"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(days: int, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA that may sign server certificates only (path length 0)."""
    key = _key()
    name = _name("relaytrain CA")
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_server(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, hosts: Sequence[str],
                ips: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address], days: int,
                now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server certificate for ``hosts`` and ``ips`` (its subjectAltNames: what clients check), signed by ``ca``."""
    key = _key()
    public = key.public_key()
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hosts] + [x509.IPAddress(ip) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0] if hosts else str(ips[0]))).issuer_name(ca.subject).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def init_tls_dir(directory: Path, *, hosts: Sequence[str],
                 ips: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address], days: int = SERVER_DAYS,
                 force: bool = False) -> TlsFiles:
    """Write a new CA and a server certificate for ``hosts`` and ``ips`` into ``directory``.

    Raises :class:`TlsError` naming the files, before writing anything, when any of them exists and
    ``force`` is not set. The folder is created (or narrowed) to 0700, the keys are written 0600.
    """
    if not hosts and not ips:
        raise TlsError("a server certificate needs at least one host name or IP address")
    if days < 1:
        raise TlsError(f"--days: must be at least 1, not {days}")
    files = TlsFiles.in_dir(directory)
    existing = [p for p in files.all() if p.exists() or p.is_symlink()]
    if existing and not force:
        raise TlsError(f"{', '.join(map(str, existing))} already exist{'s' if len(existing) == 1 else ''}: "
                       "nothing written (give --force to replace them, and then every worker needs the new ca.pem)")
    if directory.exists() and not directory.is_dir():
        raise TlsError(f"{directory} is not a folder")
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(directory, DIR_MODE)
    now = dt.datetime.now(dt.UTC)
    ca, ca_key = make_ca(max(CA_DAYS, days), now)
    server, server_key = make_server(ca, ca_key, hosts, ips, days, now)
    atomic_write_bytes(files.ca_key, _key_pem(ca_key), mode=KEY_MODE)
    atomic_write_bytes(files.server_key, _key_pem(server_key), mode=KEY_MODE)
    atomic_write_bytes(files.ca_cert, _cert_pem(ca), mode=0o644)
    atomic_write_bytes(files.server_cert, _cert_pem(server), mode=0o644)
    return files
