"""A fake of the Lium SDK's ``Lium`` class that really runs each "pod" as a local sandbox folder
with its own processes. It implements exactly the methods the lium provider calls, with the
real SDK's signatures (keyword-only arguments, ``up`` returning a dict, ``wait_ready`` returning
a pod or None, ``exec`` returning ``{stdout, stderr, exit_code, success}``).

``exec`` runs ``/bin/sh -c`` in the pod's folder with ``HOME`` set to it and, like the real SDK,
returns only when every process holding its output has exited. ``upload`` refuses paths outside
the pod. ``rm`` kills every process whose working folder is inside the pod, as deleting a
container would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ExecutorInfo:
    id: str
    huid: str
    gpu_type: str
    gpu_count: int
    price_per_hour: float


@dataclass
class VolumeInfo:
    id: str
    name: str


@dataclass
class PodInfo:
    id: str
    name: str
    huid: str
    status: str
    executor: ExecutorInfo
    template: dict[str, Any]
    root: Path
    volume_id: str | None = None
    ssh_cmd: str | None = None
    removal_scheduled_at: str | None = None


def lium_config(**fields: Any) -> Any:
    """The lium provider's configuration the tests use with this fake (fields override)."""
    from relaytrain.config import LiumProviderConfig

    return LiumProviderConfig(**{"type": "lium", "template_id": "relay-worker", "gpu_type": "H100",
                                 "gpu_count": 1, "remote_dir": "relay", **fields})


DEFAULT_EXECUTORS = [
    ExecutorInfo("0c5e-h100-a", "brave-hawk-a1", "H100", 1, 2.10),
    ExecutorInfo("0c5e-h100-b", "calm-lion-b2", "H100", 1, 1.85),
    ExecutorInfo("0c5e-h100x8", "noble-fox-c3", "H100", 8, 15.20),
    ExecutorInfo("0c5e-a6000", "swift-wolf-d4", "A6000", 1, 0.45),
]


@dataclass
class FakeLium:
    """The ``lium.sdk.Lium`` surface the provider uses, over folders under ``root``."""

    root: Path
    executors: list[ExecutorInfo] = field(default_factory=lambda: list(DEFAULT_EXECUTORS))
    never_ready: bool = False
    calls: list[tuple[str, Any]] = field(default_factory=list)
    pods: dict[str, PodInfo] = field(default_factory=dict)
    volume_list: list[VolumeInfo] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _pod(self, pod: Any) -> PodInfo:
        key = pod["id"] if isinstance(pod, dict) else getattr(pod, "id", pod)
        found = next((p for p in self.pods.values() if key in (p.id, p.name, p.huid)), None)
        if found is None:
            raise ValueError(f"no pod {key!r}")
        return found

    # -- discovery -------------------------------------------------------------------------------

    def ls(self, *, gpu_type: str | None = None, gpu_count: int | None = None) -> list[ExecutorInfo]:
        self.calls.append(("ls", {"gpu_type": gpu_type, "gpu_count": gpu_count}))
        return [e for e in self.executors if (gpu_type is None or e.gpu_type == gpu_type)
                and (gpu_count is None or e.gpu_count == gpu_count)]

    def ps(self) -> list[PodInfo]:
        self.calls.append(("ps", None))
        return list(self.pods.values())

    def volumes(self) -> list[VolumeInfo]:
        self.calls.append(("volumes", None))
        return list(self.volume_list)

    def volume_create(self, name: str, *, description: str = "") -> VolumeInfo:
        self.calls.append(("volume_create", name))
        volume = VolumeInfo(id=f"vol-{uuid.uuid4().hex[:8]}", name=name)
        self.volume_list.append(volume)
        return volume

    # -- life cycle ------------------------------------------------------------------------------

    def up(self, *, executor_id: str, name: str = "Your Pod", template_id: str | None = None,
           volume_id: str | None = None, **_: Any) -> dict[str, Any]:
        self.calls.append(("up", {"executor_id": executor_id, "name": name, "template_id": template_id,
                                  "volume_id": volume_id}))
        executor = next((e for e in self.executors if e.id == executor_id), None)
        if executor is None:
            raise ValueError(f"executor {executor_id} not found")
        with self._lock:
            pod_id = uuid.uuid4().hex
            root = self.root / "pods" / name
            root.mkdir(parents=True)
            self.pods[pod_id] = PodInfo(id=pod_id, name=name, huid=f"pod-{pod_id[:6]}", status="PENDING",
                                        executor=executor, template={"id": template_id}, root=root,
                                        volume_id=volume_id)
        return {"id": pod_id, "pod_name": name, "status": "PENDING"}

    def wait_ready(self, pod: Any, *, timeout: float = 300, poll_interval: float = 10) -> PodInfo | None:
        self.calls.append(("wait_ready", {"timeout": timeout, "poll_interval": poll_interval}))
        found = self._pod(pod)
        if self.never_ready:
            return None
        found.status = "RUNNING"
        found.ssh_cmd = f"ssh root@127.0.0.1 -p 22 # {found.root}"
        return found

    def schedule_termination(self, pod: Any, *, termination_time: str) -> dict[str, Any]:
        self.calls.append(("schedule_termination", termination_time))
        self._pod(pod).removal_scheduled_at = termination_time
        return {"ok": True}

    def rm(self, pod: Any) -> dict[str, Any]:
        found = self._pod(pod)
        self.calls.append(("rm", found.name))
        for pid in self.processes(found):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        with self._lock:
            self.pods.pop(found.id)
        shutil.rmtree(found.root, ignore_errors=True)
        return {"id": found.id, "deleted": True}

    down = rm

    # -- inside a pod ----------------------------------------------------------------------------

    def exec(self, pod: Any, *, command: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        found = self._pod(pod)
        self.calls.append(("exec", command))
        if found.status != "RUNNING":
            raise RuntimeError(f"pod {found.name} is {found.status}")
        done = subprocess.run(["/bin/sh", "-c", command], cwd=found.root, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, env={**os.environ, "HOME": str(found.root), **(env or {})})
        return {"stdout": done.stdout, "stderr": done.stderr, "exit_code": done.returncode,
                "success": done.returncode == 0}

    def upload(self, pod: Any, *, local: str, remote: str) -> None:
        found = self._pod(pod)
        self.calls.append(("upload", remote))
        target = (found.root / remote).resolve()
        if not target.is_relative_to(found.root.resolve()):
            raise ValueError(f"{remote} is outside the pod's sandbox ({found.root})")
        if not target.parent.is_dir():
            raise FileNotFoundError(f"no folder {target.parent} in the pod")
        shutil.copyfile(local, target)

    # -- for assertions --------------------------------------------------------------------------

    def processes(self, pod: PodInfo) -> list[int]:
        """Pids whose working folder is inside the pod's folder."""
        pids = []
        root = pod.root.resolve()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cwd = Path(os.readlink(entry / "cwd"))
            except OSError:
                continue
            if cwd == root or cwd.is_relative_to(root):
                pids.append(int(entry.name))
        return pids
