"""The ssh provider: machines are hosts reached with a key over SSH (asyncssh).

:func:`ssh_run` and :func:`ssh_run_many` run commands; :class:`SshProvider` wraps them for the
synchronous provider interface; :class:`SshHostAccess` is all the commander's GPU poller and
autoscaler do over SSH.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relaytrain.config import SshHostConfig

from .base import (
    CommandResult,
    Machine,
    Provider,
    ProviderError,
    RolloutLaunch,
    WorkerHandle,
    WorkerLaunch,
    alive_script,
    parse_alive,
)
from .gpu import FREE_MEMORY_USED_MB, FREE_UTILIZATION_PCT, NVIDIA_SMI_QUERY, GpuParseError, parse_nvidia_smi


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


class SshHostAccess:
    """Everything the commander does on its SSH hosts, and the only way it reaches them: poll a
    host's GPUs (and whether the workers it started there live), start a worker pinned to some
    GPUs, stop one. Hosts are the commander's records (:meth:`SshHostConfig.of_record`)."""

    def __init__(self, *, connect_timeout_s: float = 10.0, command_timeout_s: float = 60.0,
                 max_used_mb: int = FREE_MEMORY_USED_MB, max_util_pct: int = FREE_UTILIZATION_PCT) -> None:
        require_asyncssh()
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self.max_used_mb = max_used_mb
        self.max_util_pct = max_util_pct

    async def poll(self, host: Mapping[str, Any], pids: list[int]) -> dict[str, Any]:
        """``{"gpus": [GPU dict with "idle"] or None if unreachable, "error": str or None,
        "alive": the pids of ``pids`` still running relaytrain}``. Never raises for a bad host."""
        commands = [NVIDIA_SMI_QUERY] + ([alive_script(pids)] if pids else [])
        try:
            results = await ssh_run_many(SshTarget.of(SshHostConfig.of_record(host)), list(commands),
                                         connect_timeout_s=self.connect_timeout_s, timeout_s=self.command_timeout_s)
        except ProviderError as exc:
            return {"gpus": None, "error": str(exc), "alive": set()}
        smi, error, gpus = results[0], None, []
        if smi.ok:
            try:
                gpus = [{**g.to_dict(), "idle": g.is_idle(max_used_mb=self.max_used_mb, max_util_pct=self.max_util_pct)}
                        for g in parse_nvidia_smi(smi.stdout)]
            except GpuParseError as exc:
                error = str(exc)
        else:
            error = f"nvidia-smi failed: {smi.describe()}"
        return {"gpus": gpus, "error": error, "alive": parse_alive(results[1].stdout) if pids else set()}

    def _provider(self, host: Mapping[str, Any]) -> tuple[SshProvider, Machine]:
        provider = SshProvider([SshHostConfig.of_record(host)], connect_timeout_s=self.connect_timeout_s)
        return provider, provider.create(host["name"])

    def start_worker(self, host: Mapping[str, Any], *, worker_id: str, gpus: list[int], commander_url: str,
                     token: str | None, claim_wait_s: float | None,
                     rollout: RolloutLaunch | None = None, ca_cert: str | None = None) -> dict[str, Any]:
        """Start ``relay worker`` (``relay rollout-worker`` with ``rollout``) on the host, pinned to
        ``gpus``; its handle (pid, files) as a dict. ProviderError if it cannot."""
        provider, machine = self._provider(host)
        launch = WorkerLaunch(worker_id=worker_id, commander_url=commander_url, token=token,
                              labels=dict(host["labels"]), gpus=gpus, price_per_hour=host["price_per_hour"],
                              claim_wait_s=claim_wait_s, rollout=rollout, ca_cert=ca_cert)
        return provider.start_worker(machine, launch).to_dict()

    def stop_worker(self, host: Mapping[str, Any], assignment: Mapping[str, Any]) -> None:
        """Stop a worker started by :meth:`start_worker` (``assignment``: its handle). ProviderError if it cannot."""
        provider, machine = self._provider(host)
        fields = {k: assignment[k] for k in WorkerHandle.__dataclass_fields__ if k in assignment}
        provider.stop_worker(machine, WorkerHandle(**{"machine": host["name"], **fields}), grace_s=30)
