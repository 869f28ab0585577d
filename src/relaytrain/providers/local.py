"""The local provider: workers are processes on this machine, each in its own folder under ``root``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from relaytrain.checkpoint import atomic_write_bytes

from .base import CommandResult, Machine, Provider, ProviderError


class LocalProvider(Provider):
    """Every "machine" is this computer; ``create(name)`` only makes sure ``root`` exists."""

    type = "local"

    def __init__(self, root: Path, python: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.python = python or sys.executable

    def create(self, name: str) -> Machine:
        self.root.mkdir(parents=True, exist_ok=True)
        return Machine(name=name, provider=self.type, workdir=str(self.root), python=self.python,
                       address="127.0.0.1")

    def _path(self, machine: Machine, remote: str) -> Path:
        path = Path(remote)
        return path if path.is_absolute() else Path(machine.workdir) / path

    def run(self, machine: Machine, command: str, *, timeout_s: float = 120.0) -> CommandResult:
        try:
            done = subprocess.run(["/bin/sh", "-c", command], cwd=machine.workdir, capture_output=True, text=True,
                                  timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise ProviderError(f"local: command timed out after {timeout_s:.0f}s: {command[:80]!r}") from exc
        except OSError as exc:
            raise ProviderError(f"local: cannot run a shell in {machine.workdir}: {exc}") from exc
        return CommandResult(done.returncode, done.stdout, done.stderr)

    def upload(self, machine: Machine, local: Path, remote: str) -> None:
        target = self._path(machine, remote)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, Path(local).read_bytes(), mode=0o600)
        except OSError as exc:
            raise ProviderError(f"local: cannot copy {local} to {target}: {exc}") from exc

    def remove(self, machine: Machine) -> None:
        """Local folders hold runs and checkpoints: they are kept."""
