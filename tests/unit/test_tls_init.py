"""``relay tls init``: what it writes (modes, names, a chain that verifies), what it refuses."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography import x509
from typer.testing import CliRunner

from relaytrain.cli import app
from relaytrain.tls import CA_CERT, CA_KEY, DEFAULT_HOSTS, DEFAULT_IPS, SERVER_CERT, SERVER_KEY, check_server_files

FILES = (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY)


def tls_init(*args: str):
    return CliRunner().invoke(app, ["tls", "init", *args], env={"COLUMNS": "300"})


def sans(path) -> tuple[list[str], list[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return names.get_values_for_type(x509.DNSName), [str(a) for a in names.get_values_for_type(x509.IPAddress)]


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_a_ca_and_a_server_certificate_with_the_names_given(tmp_path):
    folder = tmp_path / "tls"
    result = tls_init(str(folder), "--host", "relay.example.org", "--host", "Pods.Example.org.", "--ip", "203.0.113.7",
                      "--ip", "2001:db8::1", "--days", "30")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    assert mode(folder) == 0o700
    assert mode(folder / CA_KEY) == 0o600 and mode(folder / SERVER_KEY) == 0o600
    assert sans(folder / SERVER_CERT) == (["relay.example.org", "pods.example.org"], ["203.0.113.7", "2001:db8::1"])
    server = x509.load_pem_x509_certificate((folder / SERVER_CERT).read_bytes())
    ca = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (server.not_valid_after_utc - server.not_valid_before_utc).days == 30
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days == 3650
    check_server_files(folder / SERVER_CERT, folder / SERVER_KEY)  # the key is the certificate's
    # It says what it wrote and the flags to use.
    out = " ".join(result.output.split())
    assert f"--tls-cert {folder / SERVER_CERT} --tls-key {folder / SERVER_KEY}" in out
    assert f"--commander https://relay.example.org:8080 --ca-cert {folder / CA_CERT}" in out


def test_default_names_are_localhost_and_127_0_0_1_and_help_says_so(tmp_path):
    assert tls_init(str(tmp_path / "tls")).exit_code == 0
    assert sans(tmp_path / "tls" / SERVER_CERT) == (list(DEFAULT_HOSTS), list(DEFAULT_IPS))
    help_text = " ".join(tls_init("--help").output.split())
    assert all(name in help_text for name in (*DEFAULT_HOSTS, *DEFAULT_IPS))


def test_an_existing_folder_is_narrowed_to_0700(tmp_path):
    folder = tmp_path / "tls"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    assert tls_init(str(folder)).exit_code == 0
    assert mode(folder) == 0o700


def test_refuses_to_overwrite_unless_forced(tmp_path):
    folder = tmp_path / "tls"
    assert tls_init(str(folder)).exit_code == 0
    before = {name: (folder / name).read_bytes() for name in FILES}
    result = tls_init(str(folder), "--host", "other.example.org")
    assert result.exit_code == 1
    assert "already exist" in result.output and "--force" in result.output
    assert {name: (folder / name).read_bytes() for name in FILES} == before
    # One file left over is enough to refuse, and nothing is written beside it.
    for name in (CA_CERT, SERVER_CERT, SERVER_KEY):
        (folder / name).unlink()
    result = tls_init(str(folder))
    assert result.exit_code == 1 and str(folder / CA_KEY) in " ".join(result.output.split())
    assert sorted(p.name for p in folder.iterdir()) == [CA_KEY]

    result = tls_init(str(folder), "--host", "other.example.org", "--force")
    assert result.exit_code == 0, result.output
    assert sans(folder / SERVER_CERT) == (["other.example.org"], [])
    assert (folder / CA_KEY).read_bytes() != before[CA_KEY]
    assert mode(folder / CA_KEY) == 0o600 and mode(folder / SERVER_KEY) == 0o600


@pytest.mark.parametrize(("args", "flag"), [
    (["--ip", "10.0.0.300"], "'--ip'"),
    (["--ip", "relay.example.org"], "'--ip'"),
    (["--host", "https://relay.example.org"], "'--host'"),
    (["--host", "relay.example.org:8080"], "'--host'"),
    (["--host", "10.0.0.5"], "'--host'"),
])
def test_a_bad_name_or_address_names_the_flag_and_writes_nothing(tmp_path, args, flag):
    result = tls_init(str(tmp_path / "tls"), *args)
    assert result.exit_code == 2
    assert flag in result.output
    assert not (tmp_path / "tls").exists()


def test_a_mismatched_key_is_refused_naming_the_flag(tmp_path):
    from relaytrain.errors import TlsError

    assert tls_init(str(tmp_path / "a")).exit_code == 0
    assert tls_init(str(tmp_path / "b")).exit_code == 0
    with pytest.raises(TlsError, match="--tls-key"):
        check_server_files(tmp_path / "a" / SERVER_CERT, tmp_path / "b" / SERVER_KEY)
    with pytest.raises(TlsError, match="--tls-cert"):
        check_server_files(tmp_path / "a" / SERVER_KEY, tmp_path / "a" / SERVER_KEY)


def test_every_command_that_talks_to_a_commander_takes_ca_cert():
    """Generated from the app: a new command with --commander and no --ca-cert fails here."""
    from tests.support.cli import commands, flags

    seen, missing = [], []
    for path, command in commands():
        path = " ".join(("relay", *path))
        if "--commander" in flags(command):
            seen.append(path)
            if "--ca-cert" not in flags(command):
                missing.append(path)
    assert len(seen) >= 15 and "relay worker" in seen and "relay rollout-worker" in seen
    assert missing == []
