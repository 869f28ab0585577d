"""A real OpenSSH server on a loopback port for the SSH tests, with throwaway keys, and an
``nvidia-smi`` stand-in on the sessions' PATH that prints a recorded answer.

The server is ``$RELAY_TEST_SSHD`` (default /usr/sbin/sshd). Without it, or without
``ssh-keygen`` on PATH, :meth:`Sshd.start` skips the test with the reason, or fails it under
``CI=true`` (tests/support/requires.py); ``RELAY_TEST_SSHD=/nonexistent`` shows what a machine
without OpenSSH does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.commander import free_port, wait_until
from tests.support.requires import require_program

REPO = Path(__file__).resolve().parents[2]
NVIDIA_SMI_DATA = REPO / "tests" / "data" / "nvidia_smi"


def require_sshd() -> str:
    """The sshd to run (``$RELAY_TEST_SSHD`` or /usr/sbin/sshd), with ssh-keygen on PATH; or
    skip the test (fail it under CI=true)."""
    require_program("ssh-keygen", "apt-get install openssh-client")
    return require_program("sshd", "apt-get install openssh-server",
                           path=os.environ.get("RELAY_TEST_SSHD") or "/usr/sbin/sshd")


def keygen(path: Path) -> Path:
    """A new passphrase-less ed25519 key pair at ``path`` (and ``path``.pub)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "relay-test", "-f", str(path)], check=True)
    return path


@dataclass
class Sshd:
    """``sshd -D`` on 127.0.0.1:``port`` accepting ``client_key`` for root, key only."""

    root: Path
    nvidia_smi_csv: Path = NVIDIA_SMI_DATA / "2gpu_a100.csv"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def client_key(self) -> Path:
        return self.root / "client_key"

    @property
    def log_path(self) -> Path:
        return self.root / "sshd.log"

    def start(self) -> Sshd:
        sshd = require_sshd()
        self.root.mkdir(parents=True, exist_ok=True)
        keygen(self.root / "host_key")
        keygen(self.client_key)
        (self.root / "authorized_keys").write_text((self.root / "client_key.pub").read_text())
        bin_dir = self.root / "bin"
        bin_dir.mkdir()
        smi = bin_dir / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\n# recorded output of a GPU machine\ncat '{self.nvidia_smi_csv}'\n")
        smi.chmod(0o755)
        config = self.root / "sshd_config"
        config.write_text("\n".join([
            "ListenAddress 127.0.0.1",
            f"HostKey {self.root / 'host_key'}",
            f"PidFile {self.root / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "StrictModes no",
            "UsePAM no",
            f"SetEnv PATH={bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LogLevel VERBOSE",
            "",
        ]))
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation folder
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config), "-p", str(self.port)], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._listening, 20, f"sshd on port {self.port} (log {self.log_path})")
        return self

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"sshd exited {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=15)
