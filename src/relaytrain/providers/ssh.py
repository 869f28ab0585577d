"""The ssh provider: machines are hosts reached with a key over SSH (asyncssh).

The async functions (:func:`ssh_run`, :func:`ssh_run_many`) are what the commander's GPU
poller uses; :class:`SshProvider` wraps them for the synchronous provider interface.
"""

from __future__ import annotations

import asyncio
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relaytrain.config import SshHostConfig

from .base import CommandResult, Machine, Provider, ProviderError


@dataclass(frozen=True)
class SshTarget:
    """Where and as whom to connect."""

    address: str
    port: int
    user: str
    key_path: str
    known_hosts: str | None = None

    @property
    def label(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"

    @classmethod
    def of(cls, host: SshHostConfig) -> SshTarget:
        return cls(host.address, host.port, host.user, host.key_path, host.known_hosts)


def host_config(record: dict[str, Any]) -> SshHostConfig:
    """A host record (the commander's store or its API) as an ssh host config."""
    return SshHostConfig(**{k: record[k] for k in SshHostConfig.model_fields if k in record})


def require_asyncssh() -> Any:
    """The asyncssh module; ProviderError naming the extra to install when it is missing."""
    try:
        import asyncssh
    except ImportError as exc:
        raise ProviderError("the ssh provider needs asyncssh: pip install 'relaytrain[ssh]'") from exc
    return asyncssh


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, FileNotFoundError):
        return f"no such key file: {exc.filename}"
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


async def ssh_run_many(target: SshTarget, commands: list[str | tuple[str, bytes]], *, connect_timeout_s: float = 10.0,
                       timeout_s: float = 120.0) -> list[CommandResult]:
    """Run commands one after another over one connection; an item may be ``(command, stdin bytes)``.

    ProviderError names the host and why it could not be reached (refused, timed out, key refused).
    """
    asyncssh = require_asyncssh()
    options: dict[str, Any] = {
        "port": target.port, "username": target.user, "client_keys": [target.key_path],
        "known_hosts": target.known_hosts, "connect_timeout": connect_timeout_s, "agent_path": None,
    }
    results = []
    try:
        async with asyncssh.connect(target.address, **options) as conn:
            for item in commands:
                command, data = (item, None) if isinstance(item, str) else item
                done = await conn.run(command, check=False, timeout=timeout_s, input=data,
                                      encoding=None if data is not None else "utf-8")
                out, err = (v.decode(errors="replace") if isinstance(v, bytes) else (v or "")
                            for v in (done.stdout, done.stderr))
                code = done.exit_status if done.exit_status is not None else 255
                results.append(CommandResult(code, out, err))
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise ProviderError(f"ssh {target.label}: {_reason(exc)}") from exc
    return results


async def ssh_run(target: SshTarget, command: str, *, connect_timeout_s: float = 10.0,
                  timeout_s: float = 120.0, stdin: bytes | None = None) -> CommandResult:
    """Run one command on the host."""
    item: str | tuple[str, bytes] = command if stdin is None else (command, stdin)
    return (await ssh_run_many(target, [item], connect_timeout_s=connect_timeout_s, timeout_s=timeout_s))[0]


class SshProvider(Provider):
    """Hosts by name; ``create`` reaches a host and makes its worker folder."""

    type = "ssh"

    def __init__(self, hosts: list[SshHostConfig], *, connect_timeout_s: float = 10.0) -> None:
        self.hosts = {h.name: h for h in hosts}
        self.connect_timeout_s = connect_timeout_s

    def host(self, name: str) -> SshHostConfig:
        try:
            return self.hosts[name]
        except KeyError:
            raise ProviderError(f"ssh: no host named {name!r} (have {sorted(self.hosts)})") from None

    def create(self, name: str) -> Machine:
        host = self.host(name)
        machine = Machine(name=name, provider=self.type, workdir=host.workdir, python=host.python,
                          address=host.address)
        self.check(machine, f"mkdir -p {shlex.quote(host.workdir)}")
        return machine

    def _call(self, machine: Machine, command: str, *, timeout_s: float, stdin: bytes | None = None) -> CommandResult:
        target = SshTarget.of(self.host(machine.name))
        return asyncio.run(ssh_run(target, command, connect_timeout_s=self.connect_timeout_s, timeout_s=timeout_s,
                                   stdin=stdin))

    def run(self, machine: Machine, command: str, *, timeout_s: float = 120.0) -> CommandResult:
        return self._call(machine, command, timeout_s=timeout_s)

    def upload(self, machine: Machine, local: Path, remote: str) -> None:
        try:
            data = Path(local).read_bytes()
        except OSError as exc:
            raise ProviderError(f"ssh: cannot read {local}: {exc}") from exc
        folder = remote.rsplit("/", 1)[0] if "/" in remote else "."
        command = (f"mkdir -p {shlex.quote(folder)} && umask 077 && cat > {shlex.quote(remote)}.tmp "
                   f"&& mv -f {shlex.quote(remote)}.tmp {shlex.quote(remote)}")
        result = self._call(machine, command, timeout_s=120.0, stdin=data)
        if not result.ok:
            raise ProviderError(f"ssh {machine.name}: cannot write {remote}: {result.describe()}")

    def remove(self, machine: Machine) -> None:
        """Hosts are not ours to delete: they are kept (``relay hosts rm`` forgets one)."""
