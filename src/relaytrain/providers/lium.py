"""The lium provider: one Lium pod per worker, through the Lium SDK (``pip install lium.io``).

The SDK is imported only when a pod is needed; tests pass their own ``sdk`` object. The calls
made are exactly: ``ls``, ``ps``, ``up``, ``wait_ready``, ``schedule_termination``,
``volumes``, ``volume_create``, ``exec``, ``upload`` and ``rm``. A worker is started with
``exec`` and ``nohup setsid … &`` (detached, so ``exec`` returns at once).
"""

from __future__ import annotations

import shlex
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from relaytrain.config import LiumProviderConfig, ttl_seconds

from .base import CommandResult, Machine, Provider, ProviderError


def _sdk_error(action: str, exc: Exception) -> ProviderError:
    return ProviderError(f"lium: {action} failed: {type(exc).__name__}: {exc}")


def lium_up_command(config: LiumProviderConfig, *, pod_name: str, env: dict[str, str] | None = None) -> list[str]:
    """The ``lium up`` command line that rents the same pod by hand (``relay print-lium-command``)."""
    argv = ["lium", "up"]
    if config.executor:
        argv.append(config.executor)
    else:
        argv += ["--gpu", str(config.gpu_type)]
        if config.gpu_count:
            argv += ["--count", str(config.gpu_count)]
    argv += ["--name", pod_name, "--template_id", config.template_id]
    if config.volume:
        argv += ["--volume", config.volume]
    if config.ttl:
        argv += ["--ttl", config.ttl]
    for key, value in (env or {}).items():
        argv += ["-e", f"{key}={value}"]
    return [*argv, "--yes", "--no-ssh"]


class LiumProvider(Provider):
    """Pods named after their workers; ``create`` reuses a pod of that name if one is up."""

    type = "lium"

    def __init__(self, config: LiumProviderConfig, *, sdk: Any | None = None) -> None:
        self.config = config
        self._sdk = sdk
        self._pods: dict[str, Any] = {}
        self._volume_lock = threading.Lock()
        self._volume: str | None = None

    @property
    def sdk(self) -> Any:
        if self._sdk is None:
            try:
                from lium import Lium
            except ImportError as exc:
                raise ProviderError("the lium provider needs the Lium SDK: pip install lium.io") from exc
            try:
                self._sdk = Lium()
            except Exception as exc:  # the SDK raises ValueError without an API key, and its own errors
                raise _sdk_error("starting the SDK (is LIUM_API_KEY set?)", exc) from exc
        return self._sdk

    # -- pods ------------------------------------------------------------------------------------

    def _find(self, name: str) -> Any | None:
        try:
            pods = self.sdk.ps()
        except Exception as exc:
            raise _sdk_error("ps", exc) from exc
        return next((p for p in pods if getattr(p, "name", None) == name), None)

    def _executor_id(self) -> str:
        c = self.config
        try:
            if c.executor:
                nodes = self.sdk.ls()
                match = next((e for e in nodes if c.executor in (e.id, getattr(e, "huid", None))), None)
                if match is None:
                    raise ProviderError(f"lium: no executor {c.executor!r} is available")
                return match.id
            nodes = self.sdk.ls(gpu_type=c.gpu_type, gpu_count=c.gpu_count)
        except ProviderError:
            raise
        except Exception as exc:
            raise _sdk_error("ls", exc) from exc
        if not nodes:
            raise ProviderError(f"lium: no executor with {c.gpu_count or 'any number of'} {c.gpu_type} is available")
        return min(nodes, key=lambda e: e.price_per_hour).id

    def _volume_id(self) -> str | None:
        """The volume to mount: ``id:<HUID>`` as given; ``new:name=<NAME>`` found or created once."""
        spec = self.config.volume
        if spec is None:
            return None
        if spec.startswith("id:"):
            return spec[3:]
        name = spec.removeprefix("new:name=").split(",", 1)[0]
        with self._volume_lock:  # pods are created in parallel: one volume, not one each
            if self._volume is None:
                try:
                    existing = next((v for v in self.sdk.volumes() if v.name == name), None)
                    self._volume = (existing or self.sdk.volume_create(name)).id
                except Exception as exc:
                    raise _sdk_error(f"volume {name}", exc) from exc
            return self._volume

    def create(self, name: str) -> Machine:
        pod = self._find(name)
        if pod is None:
            executor_id = self._executor_id()
            volume_id = self._volume_id()
            try:
                created = self.sdk.up(executor_id=executor_id, name=name, template_id=self.config.template_id,
                                      volume_id=volume_id)
            except Exception as exc:
                raise _sdk_error(f"up {name}", exc) from exc
            pod = created
        try:
            ready = self.sdk.wait_ready(pod, timeout=self.config.ready_timeout_s,
                                        poll_interval=self.config.poll_interval_s)
        except Exception as exc:
            raise _sdk_error(f"wait_ready {name}", exc) from exc
        if ready is None:
            stuck = self._find(name)
            if stuck is not None:
                self.sdk.rm(stuck)  # still billing while provisioning: give it back
            raise ProviderError(f"lium: pod {name} was not ready within {self.config.ready_timeout_s:.0f}s; removed")
        if self.config.ttl:
            until = datetime.now(UTC) + timedelta(seconds=ttl_seconds(self.config.ttl))
            try:
                self.sdk.schedule_termination(ready, termination_time=until.strftime("%Y-%m-%dT%H:%M:%SZ"))
            except Exception as exc:
                raise _sdk_error(f"schedule_termination {name}", exc) from exc
        self._pods[name] = ready
        return Machine(name=name, provider=self.type, workdir=self.config.remote_dir, python=self.config.python,
                       address=getattr(ready, "ssh_cmd", None), id=getattr(ready, "id", None))

    def _pod(self, machine: Machine) -> Any:
        pod = self._pods.get(machine.name) or self._find(machine.name)
        if pod is None:
            raise ProviderError(f"lium: no pod named {machine.name} (removed, or its ttl ran out?)")
        self._pods[machine.name] = pod
        return pod

    # -- commands --------------------------------------------------------------------------------

    def run(self, machine: Machine, command: str, *, timeout_s: float = 120.0) -> CommandResult:
        wrapped = f"timeout {int(timeout_s)} sh -c {shlex.quote(command)}"
        try:
            result = self.sdk.exec(self._pod(machine), command=wrapped)
        except ProviderError:
            raise
        except Exception as exc:
            raise _sdk_error(f"exec on {machine.name}", exc) from exc
        return CommandResult(int(result.get("exit_code", 255)), result.get("stdout") or "", result.get("stderr") or "")

    def upload(self, machine: Machine, local: Path, remote: str) -> None:
        folder = remote.rsplit("/", 1)[0] if "/" in remote else "."
        self.check(machine, f"mkdir -p {shlex.quote(folder)}")
        try:
            self.sdk.upload(self._pod(machine), local=str(local), remote=remote)
        except Exception as exc:
            raise _sdk_error(f"upload to {machine.name}:{remote}", exc) from exc
        self.check(machine, f"chmod 600 {shlex.quote(remote)}")

    def remove(self, machine: Machine) -> None:
        pod = self._pods.pop(machine.name, None) or self._find(machine.name)
        if pod is None:
            return
        try:
            self.sdk.rm(pod)
        except Exception as exc:
            raise _sdk_error(f"rm {machine.name}", exc) from exc
