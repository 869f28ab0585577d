"""The worker agent (``relay worker``): registers, heartbeats, claims runs by long-poll and
runs each grant as an :class:`~relaytrain.worker.attempt.Attempt`.

SIGTERM or SIGINT is a preemption notice: the trainer is asked to checkpoint and stop, the
checkpoint is made durable, the lease is released as ``preempted``, and the worker exits.

An attempt ended by a fault of this machine (a full disk, a failed GPU) is followed by
:class:`~relaytrain.worker.machine.MachineHealth`: the worker frees what it can and, if the fault
stays, is degraded: it claims nothing, heartbeats the reason, and rechecks every ``recheck_s``.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from relaytrain import __version__
from relaytrain.api import models as m
from relaytrain.api.client import RelayClient
from relaytrain.config import RUN_KINDS
from relaytrain.errors import NotFound, RelayError, commander_unreachable

from .attempt import Attempt
from .guard import StopReason
from .inventory import gpu_inventory
from .machine import MachineHealth

log = logging.getLogger(__name__)


@dataclass
class WorkerSettings:
    commander: str
    """The commander's URL, or its replicas' separated by commas (:func:`relaytrain.api.client.commander_urls`)."""
    token: str | None
    worker_id: str
    workdir: Path
    labels: dict[str, str] = field(default_factory=dict)
    kinds: list[str] | None = None
    max_runs: int | None = None
    price_per_hour: float | None = None
    provider: str = "local"
    claim_wait_s: float = 10.0
    heartbeat_s: float = m.WORKER_HEARTBEAT_S
    progress_interval_s: float = 1.0
    advertise_host: str | None = None
    """The address rollout workers reach this machine's trainers by; None: the one routing to the commander."""
    ca_cert: Path | None = None
    """The CA an ``https://`` commander's certificate is verified with; None: the public CAs."""
    recheck_s: float = 10.0
    """While degraded for a full disk, how often the free space is checked again."""
    nproc_per_node: int | None = None
    """The ranks a distributed built-in run with no fixed ``nproc_per_node`` starts here (``RELAY_NPROC_PER_NODE``);
    None: one per GPU the trainer sees."""
    command_runs: bool = True
    """False: never claim a ``kind: command`` run (code from whoever may submit runs: ``relay worker
    --no-command-runs``)."""

    def claim_kinds(self) -> list[str] | None:
        """The run kinds a claim asks for; None: every kind."""
        if self.command_runs:
            return self.kinds
        return [k for k in (self.kinds or RUN_KINDS) if k != "command"]


class Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.client = RelayClient(settings.commander, settings.token, timeout_s=10, retries=2,
                                  ca_cert=settings.ca_cert)
        self.resources = m.WorkerResources(gpus=gpu_inventory(), labels=settings.labels,
                                           price_per_hour=settings.price_per_hour)
        self._stopping = threading.Event()
        self._current: Attempt | None = None
        self.outcomes: list[tuple[str, int, str]] = []
        self.health = MachineHealth(settings.worker_id, settings.workdir)

    def preempt(self, why: str = "preemption notice") -> None:
        """Stop after the current attempt is checkpointed and released as preempted."""
        self._stopping.set()
        attempt = self._current
        if attempt is not None:
            attempt.stop(StopReason.PREEMPTED, why)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.warning("received %s: preempting", signal.Signals(signum).name)
        self.preempt(f"worker received {signal.Signals(signum).name}")

    def run(self) -> int:
        """Serve runs until ``max_runs`` are done or a signal arrives. Returns an exit code."""
        s = self.settings
        s.workdir.mkdir(parents=True, exist_ok=True)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self._register()
        self._beat()  # the condition this process starts in (ok): a restart clears a degraded record
        beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        beat.start()
        done = 0
        gpus = ", ".join(g.name for g in self.resources.gpus) or "no GPUs"
        log.info("worker %s serving %s (%s) from %s", s.worker_id, s.commander, gpus, s.workdir)
        while not self._stopping.is_set() and (s.max_runs is None or done < s.max_runs):
            if self.health.degraded and not self._recovered():
                self._stopping.wait(s.recheck_s)
                continue
            asked = time.monotonic()
            try:
                grant = self.client.claim(m.ClaimRequest(worker_id=s.worker_id, resources=self.resources,
                                                         kinds=s.claim_kinds(), wait_s=s.claim_wait_s))
            except RelayError as exc:
                if not commander_unreachable(exc):
                    raise
                log.warning("claim failed (%s); retrying", exc)
                self._stopping.wait(5.0)
                continue
            if grant is None:
                continue
            attempt = Attempt(self.client, grant, worker_id=s.worker_id, workdir=s.workdir,
                              granted_at_monotonic=asked, progress_interval_s=s.progress_interval_s,
                              advertise_host=s.advertise_host, nproc_per_node=s.nproc_per_node)
            self._current = attempt
            if self._stopping.is_set():
                attempt.stop(StopReason.PREEMPTED, "worker is shutting down")
            outcome = attempt.run()
            self._current = None
            self.outcomes.append((grant.run_id, grant.epoch, outcome))
            done += 1
            if attempt.fault is not None:
                self.health.after_fault(attempt.fault, attempt.fault_message, attempt.disk_need)
                if self.health.degraded:
                    self._beat()
        self._stopping.set()
        self.client.close()
        return 0

    def _register(self) -> None:
        s = self.settings
        req = m.RegisterWorker(worker_id=s.worker_id, provider=s.provider, hostname=socket.gethostname()[:255],
                               version=__version__, resources=self.resources, kinds=s.kinds)
        while True:
            try:
                self.client.register(req)
                return
            except RelayError as exc:
                if not commander_unreachable(exc) or self._stopping.wait(5.0):
                    raise
                log.warning("%s; retrying registration", exc)

    def _recovered(self) -> bool:
        """Check a degraded machine again; True (and the commander told at once) once it is fit."""
        if not self.health.recheck():
            return False
        self._beat()
        return True

    def _heartbeat(self) -> None:
        while not self._stopping.wait(self.settings.heartbeat_s):
            self._beat()

    def _beat(self) -> None:
        """Heartbeat with the machine's condition (it is sent every time: a commander restored from
        a backup, or a worker that re-registered, learns it again)."""
        try:
            self.client.heartbeat(self.settings.worker_id, health=self.health.wire())
        except NotFound:
            self._register()
        except RelayError as exc:
            log.warning("heartbeat failed: %s", exc)
