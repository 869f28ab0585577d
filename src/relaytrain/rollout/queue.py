"""The rollout manager's book of groups: which are waiting, handed out, finished, trained.

A run trains ``total`` groups; group ``g`` is the ``g``-th prompt of the data order. Every group
is, at any moment, in exactly one of four states::

    pending ──lease──▶ leased ──accept──▶ ready ──take_ready──▶ trained
       ▲                 │                  │
       └──expire/release/drop_worker────────┘ (stale at training time: dropped, regenerated)

A lease carries an ``attempt`` number, one more every time the group is handed out, and a
deadline; a result is accepted only for the group's current attempt and only once, so a result
that arrives after its lease expired (the group was handed to someone else) is refused, like a
write under an old epoch. The trainer takes groups itself with ``lease(TRAINER, …)`` when too few
are ready. Pure state, no I/O and no clock of its own (callers pass ``now``); thread-safe.

``state_dict()`` is what a checkpoint keeps: the trained groups and the ready ones with their
completions. Leased groups are not kept: after a resume they are pending again.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

TRAINER = "trainer"
"""The lessee name of groups the trainer generates itself."""
STATE_FORMAT = 1


class GroupRefused(Exception):
    """A lease or result the manager will not take; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ReadyGroup:
    """A group's G completions, their rewards and where they came from."""

    group_id: int
    version: int
    """The weight version the completions were sampled with."""
    source: str
    """The rollout worker's id, or ``trainer``."""
    token_ids: list[list[int]]
    logps: list[list[float]]
    finished: list[bool]
    rewards: list[float | None]
    """The weighted total reward of each completion."""
    per_function: dict[str, list[float | None]] = field(default_factory=dict)
    action_mask: list[list[int]] | None = None
    """Episodes: 1 on the policy's tokens of each completion, 0 on the environment's."""

    @property
    def tokens(self) -> int:
        return sum(len(t) for t in self.token_ids)


@dataclass
class Lease:
    worker_id: str
    attempt: int
    deadline: float
    version: int


@dataclass
class Counters:
    requeued: int = 0
    """Groups handed out again because their lessee vanished, gave them back or ran out of time."""
    dropped_stale: int = 0
    """Finished groups not trained because they were sampled too many versions ago (regenerated): refused
    when posted, or found stale when their turn to be trained came."""
    refused_late: int = 0
    """Results refused because their lease was no longer current."""
    accepted: int = 0
    """Results taken from rollout workers."""


class GroupBook:
    """The state of every group of a run (see the module docstring)."""

    def __init__(self, total: int, *, max_staleness: int, lease_s: float) -> None:
        if total < 0:
            raise ValueError("total must be >= 0")
        self.total = total
        self.max_staleness = max_staleness
        self.lease_s = lease_s
        self.counters = Counters()
        self._lock = threading.Condition()
        self._pending: list[int] = list(range(total))  # a heap: lowest group first
        self._leased: dict[int, Lease] = {}
        self._ready: dict[int, ReadyGroup] = {}
        self._trained: set[int] = set()
        self._attempts: dict[int, int] = {}

    # -- handing out ------------------------------------------------------------------------

    def lease(self, worker_id: str, count: int, *, version: int, latest: int | None,
              now: float) -> list[tuple[int, int]]:
        """Up to ``count`` pending groups, lowest first, as ``(group_id, attempt)``, leased to
        ``worker_id`` who samples with weights ``version``. Refused (409) when that version is
        already too stale to be trained against ``latest``."""
        if latest is not None and worker_id != TRAINER and latest - version > self.max_staleness:
            raise GroupRefused(409, f"version {version} is more than max_staleness={self.max_staleness} behind "
                                    f"the latest {latest}: pull newer weights")
        if latest is not None and version > latest:
            raise GroupRefused(409, f"version {version} was never published (latest is {latest})")
        with self._lock:
            self._expire(now)
            taken = []
            while self._pending and len(taken) < count:
                group = heapq.heappop(self._pending)
                attempt = self._attempts.get(group, 0) + 1
                self._attempts[group] = attempt
                self._leased[group] = Lease(worker_id, attempt, now + self.lease_s, version)
                taken.append((group, attempt))
            return taken

    def check_result(self, group_id: int, worker_id: str, attempt: int, *, version: int, latest: int | None) -> None:
        """Raise ``GroupRefused`` unless a result for this lease may be accepted now. A result already too
        stale to be trained ends its lease: the group is pending again at once (``dropped_stale``), not
        left with a worker that has nothing more to give for it."""
        with self._lock:
            self._check_lease(group_id, worker_id, attempt)
            if latest is None or version > latest:
                raise GroupRefused(409, f"group {group_id}: version {version} was never published")
            if latest - version > self.max_staleness:
                self._requeue(group_id, requeued=False)
                self.counters.dropped_stale += 1
                raise GroupRefused(409, f"group {group_id}: sampled with version {version}, more than "
                                        f"max_staleness={self.max_staleness} behind {latest}; handed out again")

    def _check_lease(self, group_id: int, worker_id: str, attempt: int) -> Lease:
        if not 0 <= group_id < self.total:
            raise GroupRefused(404, f"group {group_id}: no such group (this run has {self.total})")
        if group_id in self._ready or group_id in self._trained:
            raise GroupRefused(409, f"group {group_id}: a result was already accepted")
        lease = self._leased.get(group_id)
        if lease is None or lease.attempt != attempt or lease.worker_id != worker_id:
            self.counters.refused_late += 1
            current = f"attempt {lease.attempt} of {lease.worker_id}" if lease else "not leased"
            raise GroupRefused(409, f"group {group_id}: attempt {attempt} of {worker_id} is no longer current "
                                    f"({current}): late result refused")
        return lease

    def accept(self, group: ReadyGroup, worker_id: str, attempt: int) -> None:
        """Take a finished group under its current lease (once); the lease ends."""
        with self._lock:
            self._check_lease(group.group_id, worker_id, attempt)
            del self._leased[group.group_id]
            self._ready[group.group_id] = group
            if worker_id != TRAINER:
                self.counters.accepted += 1
            self._lock.notify_all()

    def finish_own(self, groups: Iterable[int]) -> None:
        """The trainer sampled these groups itself (leased to ``TRAINER``): their leases end, and
        the caller trains them at once (``mark_trained``)."""
        with self._lock:
            for group in groups:
                lease = self._leased.get(group)
                if lease is None or lease.worker_id != TRAINER:
                    raise RuntimeError(f"group {group} is not leased to the trainer")
                del self._leased[group]

    def release(self, group_id: int, worker_id: str, attempt: int) -> None:
        """The lessee gives a group back: pending again."""
        with self._lock:
            self._check_lease(group_id, worker_id, attempt)
            self._requeue(group_id)

    def drop_worker(self, worker_id: str) -> list[int]:
        """Every group leased to ``worker_id`` goes back to pending; returns them."""
        with self._lock:
            groups = [g for g, lease in self._leased.items() if lease.worker_id == worker_id]
            for group in groups:
                self._requeue(group)
            return groups

    def expire(self, now: float) -> list[int]:
        """Leases past their deadline go back to pending; returns those groups."""
        with self._lock:
            return self._expire(now)

    def _expire(self, now: float) -> list[int]:
        late = [g for g, lease in self._leased.items() if lease.deadline <= now and lease.worker_id != TRAINER]
        for group in late:
            self._requeue(group)
        return late

    def _requeue(self, group: int, *, requeued: bool = True) -> None:
        del self._leased[group]
        heapq.heappush(self._pending, group)
        if requeued:
            self.counters.requeued += 1
        self._lock.notify_all()

    # -- training ---------------------------------------------------------------------------

    def take_ready(self, count: int, *, version: int) -> tuple[list[ReadyGroup], list[ReadyGroup]]:
        """Up to ``count`` ready groups, lowest first, to be trained at weights ``version``; and the
        ready groups found too stale for it, which go back to pending (to be regenerated)."""
        with self._lock:
            stale = [g for g in self._ready.values() if version - g.version > self.max_staleness]
            for group in stale:
                del self._ready[group.group_id]
                heapq.heappush(self._pending, group.group_id)
                self.counters.dropped_stale += 1
            chosen = [self._ready.pop(g) for g in sorted(self._ready)[:count]]
            return chosen, stale

    def mark_trained(self, groups: Iterable[int]) -> None:
        with self._lock:
            for group in groups:
                if group in self._trained:
                    raise RuntimeError(f"group {group} trained twice")
                self._trained.add(group)

    def wait(self, timeout: float) -> None:
        """Block until a group changes state (a result, a re-queue) or ``timeout`` passes."""
        with self._lock:
            self._lock.wait(timeout)

    # -- views ------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"pending": len(self._pending), "leased": len(self._leased), "ready": len(self._ready),
                    "trained": len(self._trained)}

    def in_flight(self, worker_id: str) -> int:
        with self._lock:
            return sum(1 for lease in self._leased.values() if lease.worker_id == worker_id)

    @property
    def has_pending(self) -> bool:
        with self._lock:
            return bool(self._pending)

    @property
    def finished(self) -> bool:
        """Nothing left to hand out: every group is trained, ready or leased."""
        with self._lock:
            return not self._pending

    # -- checkpoint -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe: the trained groups (as ranges), the ready groups, the counters. Leased groups
        are left out: after a resume they are pending."""
        with self._lock:
            return {
                "format": STATE_FORMAT,
                "total": self.total,
                "trained": _ranges(self._trained),
                "ready": [asdict(g) for g in sorted(self._ready.values(), key=lambda g: g.group_id)],
                "counters": asdict(self.counters),
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``: trained groups stay trained, ready ones ready, the rest pending."""
        if int(state.get("format", 0)) != STATE_FORMAT:
            raise ValueError(f"rollout state format {state.get('format')!r} is not {STATE_FORMAT}")
        with self._lock:
            self._trained = {g for start, stop in state["trained"] for g in range(start, stop) if g < self.total}
            self._ready = {}
            for record in state["ready"]:
                group = ReadyGroup(**record)
                if group.group_id < self.total and group.group_id not in self._trained:
                    self._ready[group.group_id] = group
            self._leased = {}
            self._pending = [g for g in range(self.total) if g not in self._trained and g not in self._ready]
            heapq.heapify(self._pending)
            self.counters = Counters(**state.get("counters", {}))


def _ranges(groups: set[int]) -> list[list[int]]:
    """``{0, 1, 2, 5}`` -> ``[[0, 3], [5, 6]]`` (half-open)."""
    out: list[list[int]] = []
    for group in sorted(groups):
        if out and out[-1][1] == group:
            out[-1][1] += 1
        else:
            out.append([group, group + 1])
    return out
