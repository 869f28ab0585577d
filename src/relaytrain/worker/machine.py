"""The worker's own machine (DESIGN §7, the ``machine`` failure class): name a machine fault in
words an operator can act on, free what the worker can, and say whether the machine is still fit.

A machine fault — a full disk, a failed GPU, a store this machine cannot reach — is not the run's
fault: the attempt is released as ``failed (machine)``, which spends no retry, and the commander
keeps the run from this worker for a while (anti-affinity). Then, between attempts (nothing of
ours runs), the worker:

1. disk full: frees what it can, in this order, until the run's need fits: partial checkpoint
   folders (``.tmp-*``, ``.old-*``: a crashed save's), then each run's local checkpoint copies
   (``checkpoints/``, ``init/``, ``sources/``), least recently used run first. Those are safe to
   delete: a durable checkpoint is in the store (a resume fetches it again), and one that is not
   durable is never resumed from. Logs, progress files, trajectories and tracker files stay.
   If the free space is still short of the need — the failed run's checkpoint size times
   ``keep_last + 1`` (the copies retention keeps locally, plus the one being written) — the
   worker is **degraded**;
2. GPU fault: degraded at once; only a restart of the worker (after the GPU is fixed) clears it;
3. store unreachable: not degraded (the next run may use another store); the anti-affinity alone
   sends the run elsewhere.

A degraded worker claims nothing and heartbeats its condition and reason. A disk-degraded one
checks its free space again before each claim it would make (every ``recheck_s``) and claims
again once the need fits.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from relaytrain.api import models as m
from relaytrain.api.status import WorkerCondition
from relaytrain.contract import MachineFault, RunLayout, disk_full, runs_dir

log = logging.getLogger(__name__)

MB = 1 << 20
FULL_BELOW = MB
"""A filesystem with less free space than this (or than one checkpoint of the run) is full."""
COPY_FOLDERS = ("checkpoints", "init", "sources")
"""A run root's folders that hold only copies of what its store keeps (or can never be resumed from)."""
PARTIAL_PREFIXES = (".tmp-", ".old-")
"""Checkpoint folders a crashed or replaced save leaves behind (checkpoint/commit.py writes ``.tmp-step_N-*``)."""

# Connection failures of the clients the stores use, by class name: the worker does not import boto3 or httpx.
_CONNECTION_ERRORS = frozenset({"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError",
                                "NewConnectionError", "ConnectError", "ConnectTimeout", "ReadTimeout"})


def store_unreachable(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or one it was raised from) is a connection failure: the store could not be
    reached from here, which says nothing of the checkpoint."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
            return True
        if any(cls.__name__ in _CONNECTION_ERRORS for cls in type(exc).__mro__):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def fault_of(exc: BaseException) -> MachineFault | None:
    """The machine fault behind one of the worker's own errors (a download, an upload, a write), or None."""
    if disk_full(exc):
        return MachineFault.DISK
    if store_unreachable(exc):
        return MachineFault.STORE
    return None


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 if it is gone; files vanishing meanwhile are skipped)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
    return total


def checkpoint_bytes(checkpoints: Path) -> int:
    """The size of one checkpoint of a run: its largest step folder here, or the largest partial
    one (a save that failed: at least what it had written), whichever is larger; 0 if none."""
    if not checkpoints.is_dir():
        return 0
    sizes = [tree_bytes(p) for p in checkpoints.iterdir()
             if p.is_dir() and (p.name.startswith("step_") or p.name.startswith(PARTIAL_PREFIXES))]
    return max(sizes, default=0)


def free_bytes(path: Path) -> int:
    """Free bytes on ``path``'s filesystem for an unprivileged writer (its nearest existing folder)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def disk_message(worker_id: str, path: Path, free: int, need: int) -> str:
    """The operator's sentence for a full disk."""
    return f"disk full on worker {worker_id} at {path}: {_size(free)} free, the checkpoint needs {_size(need)}"


def _size(n: int) -> str:
    if n >= MB:
        return f"{n / MB:.0f} MB" if n >= 10 * MB else f"{n / MB:.1f} MB"
    return f"{n / 1024:.0f} KB" if n >= 10 * 1024 else f"{n:,} bytes"


def looks_full(path: Path, need: int) -> bool:
    """Whether the filesystem of ``path`` has less room than one checkpoint (``need`` bytes, at least
    ``FULL_BELOW``): a trainer that failed without saying why (its stderr is on the same full disk,
    so ENOSPC may never reach it) is then taken to have failed for the disk."""
    return free_bytes(path) < max(need, FULL_BELOW)


@dataclass(frozen=True)
class DiskNeed:
    """What a run that hit a full disk needs on this machine."""

    checkpoint: int
    """Bytes of one of its checkpoints."""
    keep: int
    """Checkpoints held here at once: ``keep_last`` and the one being written."""

    @property
    def total(self) -> int:
        return max(self.checkpoint, MB) * self.keep


def free_space(workdir: Path, need: int) -> int:
    """Delete what the worker may (this module's docstring) until ``need`` bytes are free. Returns
    the bytes of what it deleted. Call only while no attempt runs."""
    root = runs_dir(workdir)
    if not root.is_dir():
        return 0
    run_roots = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    partials = [p for run in run_roots for p in _children(RunLayout(run).checkpoints)
                if p.is_dir() and p.name.startswith(PARTIAL_PREFIXES)]
    copies = [run / name for run in run_roots for name in COPY_FOLDERS if (run / name).is_dir()]
    freed = 0  # counted here, not read off the filesystem: other processes free and fill it too
    for path in [*partials, *copies]:
        if free_bytes(root) >= need:
            break
        size = tree_bytes(path)
        log.info("freeing %s (%.1f MB)", path, size / MB)
        shutil.rmtree(path, ignore_errors=True)
        freed += size - (tree_bytes(path) if path.exists() else 0)
    return freed


def _children(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.is_dir() else []


class MachineHealth:
    """The worker's machine's condition: ok, or degraded with a reason, and what clears it."""

    def __init__(self, worker_id: str, workdir: Path) -> None:
        self.worker_id = worker_id
        self.workdir = workdir
        self.condition = WorkerCondition.OK
        self.reason: str | None = None
        self._disk_need: int | None = None  # set while degraded for a full disk: cleared when this fits

    @property
    def degraded(self) -> bool:
        return self.condition == WorkerCondition.DEGRADED

    def wire(self) -> m.WorkerHealth:
        return m.WorkerHealth(condition=self.condition, reason=self.reason)

    def after_fault(self, fault: MachineFault, message: str, need: DiskNeed | None) -> None:
        """An attempt ended in ``fault``: free what can be freed, then decide the condition."""
        if fault == MachineFault.GPU:
            self._degrade(f"GPU fault (restart the worker once the GPU is fixed): {message}")
        elif fault == MachineFault.DISK:
            total = need.total if need is not None else MB
            freed = free_space(self.workdir, total)
            free = free_bytes(runs_dir(self.workdir))
            log.warning("disk full: freed %.0f MB, %.0f MB free, the last run needs %.0f MB", freed / MB, free / MB,
                        total / MB)
            if free < total:
                self._disk_need = total
                keep = (f" ({need.keep} checkpoints of {need.checkpoint / MB:.0f} MB: keep_last and the one being "
                        "written)" if need is not None else "")
                self._degrade(f"disk full on worker {self.worker_id} at {runs_dir(self.workdir)}: {free / MB:.0f} MB "
                              f"free after freeing {freed / MB:.0f} MB of local checkpoint copies; the last run needs "
                              f"{total / MB:.0f} MB here{keep}")

    def recheck(self) -> bool:
        """Check a disk fault again; True if the worker may claim."""
        if self._disk_need is not None and free_bytes(runs_dir(self.workdir)) >= self._disk_need:
            log.info("the disk has room again (%.0f MB free): no longer degraded",
                     free_bytes(runs_dir(self.workdir)) / MB)
            self._disk_need = None
            self.condition, self.reason = WorkerCondition.OK, None
        return not self.degraded

    def _degrade(self, reason: str) -> None:
        log.error("worker %s is degraded and claims nothing: %s", self.worker_id, reason)
        self.condition, self.reason = WorkerCondition.DEGRADED, reason[:2000]
