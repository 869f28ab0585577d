"""Runs nobody can take: a queued run that no live worker and no SSH host could ever serve (its
GPUs, its labels, its kind) is shown ``unschedulable``, with the reason, once it has waited
longer than the commander's grace (``relay serve --unschedulable-after``), in which workers are
still expected to come. Functions of an open connection.

It is derived when runs are read, not stored: the run stays ``queued``, the claim's SQL still
takes it, and it is granted the moment a worker that fits asks (nothing to clear first, no
replica to tell). The cost is one read of the live workers and the usable hosts per page of runs,
then a comparison of each queued run past its grace against the distinct offers (identical
workers count once): a page is at most 500 runs, and a fleet offers a few dozen distinct
(GPUs, labels, kinds) at most. A sweeper writing a flag would cost a write per run and sweep,
taken under SQLite's single writer lock, and would be up to a sweep late in both directions.

Who counts: workers whose heartbeat is recent (``alive`` in ``relay workers``) and that are not
degraded (a machine fault: they claim nothing), with the GPUs, labels and kinds they registered;
enabled hosts that answered their last GPU poll (the SSH autoscaler can start a worker with all of
their GPUs). The rule is the claim's (:mod:`.leases`): enough GPUs, every label the run asks for,
and the run's kind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from relaytrain.api.labels import labels_match
from relaytrain.api.models import WORKER_DEAD_AFTER_S
from relaytrain.api.status import RunStatus, WorkerCondition

from .schema import hosts, runs, workers


@dataclass(frozen=True)
class Offer:
    """What a live worker, or a worker the autoscaler could start on a host, can take."""

    gpus: int
    labels: tuple[tuple[str, str], ...]
    kinds: frozenset[str] | None  # None: every kind
    host: bool = False

    def serves(self, gpus: int, labels: Mapping[str, str], kind: str) -> bool:
        return (gpus <= self.gpus and labels_match(labels, dict(self.labels))
                and (self.kinds is None or kind in self.kinds))


def offers(conn: sa.Connection, now: float) -> set[Offer]:
    """The distinct offers of the live workers and the usable hosts at ``now``."""
    found = {
        Offer(len(w.gpus or []), tuple(sorted((w.labels or {}).items())),
              None if w.kinds is None else frozenset(w.kinds))
        for w in conn.execute(sa.select(workers.c.gpus, workers.c.labels, workers.c.kinds)
                              .where(workers.c.last_heartbeat >= now - WORKER_DEAD_AFTER_S,
                                     workers.c.condition == WorkerCondition.OK))
    }
    found |= {
        Offer(len(h.gpus or []), tuple(sorted((h.labels or {}).items())), None, host=True)
        for h in conn.execute(sa.select(hosts.c.gpus, hosts.c.labels)
                              .where(hosts.c.enabled.is_(True), hosts.c.reachable.is_(True)))
    }
    return found


def reason(gpus: int, labels: Mapping[str, str], kind: str, available: Iterable[Offer]) -> str | None:
    """Why no offer can serve a run needing ``gpus``, ``labels`` and ``kind``; None if one can."""
    available = list(available)
    if any(o.serves(gpus, labels, kind) for o in available):
        return None
    if not available:
        return "no live worker or usable SSH host is registered"
    noun = "worker or host" if any(o.host for o in available) else "worker"
    why = []
    largest = max(o.gpus for o in available)
    if gpus > largest:
        why.append(f"needs {gpus} GPU{'s' if gpus != 1 else ''}; the largest {noun} has {largest}")
    why += [f"needs label {k}={v}; no {noun} has it" for k, v in sorted(labels.items())
            if not any(dict(o.labels).get(k) == v for o in available)]
    if not any(o.kinds is None or kind in o.kinds for o in available):
        why.append(f"a {kind} run; no {noun} serves {kind} runs")
    if not why:  # each need is met somewhere, but never all by one
        wanted = [f"{gpus} GPUs", *(f"label {k}={v}" for k, v in sorted(labels.items())), f"kind {kind}"]
        why.append(f"no single {noun} offers all of: {', '.join(wanted)}")
    return "; ".join(why)


def annotate(conn: sa.Connection, items: list[dict[str, Any]], *, after_s: float | None,
             now: float | None) -> None:
    """Set each run's ``unschedulable``: the reason, for a queued run waiting longer than ``after_s``
    at ``now`` that nobody can serve; else None. ``after_s`` None: not computed (None for all)."""
    for item in items:
        item["unschedulable"] = None
    if after_s is None:
        return
    assert now is not None, "annotate: now is needed with after_s"
    waiting = {item["run_id"]: item for item in items
               if item["status"] == RunStatus.QUEUED and now - item["updated_at"] >= after_s}
    if not waiting:
        return
    needs = conn.execute(sa.select(runs.c.run_id, runs.c.gpus, runs.c.labels, runs.c.kind)
                         .where(runs.c.run_id.in_(list(waiting)))).all()
    available = offers(conn, now)
    for run in needs:
        waiting[run.run_id]["unschedulable"] = reason(run.gpus, run.labels or {}, run.kind, available)
