"""The goodput and cost ledger (DESIGN §7): what each run's attempts cost and how much of
their time trained steps that were kept.

Per attempt: wall time (granted → ended, or now), steps gained (trained), steps lost (trained
but in no durable checkpoint; for a killed holder, a lower bound: only reported steps are
known), GPUs and the worker's price per hour. Per run and per provider: GPU-hours, dollars,
steps lost, failover (last progress of an attempt that did not finish → first progress of the
next) and ETTR = useful training time ÷ wall time, where useful time is the kept steps times
the measured seconds per step.
"""

from __future__ import annotations

import statistics
from typing import Any

import sqlalchemy as sa

from relaytrain.api.status import AttemptOutcome

from . import runs as run_rows
from .schema import attempts, metrics, runs, workers


def _summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    wall = sum(a["wall_s"] for a in rows)
    useful = sum(a["useful_s"] for a in rows)
    failovers = [a["failover_s"] for a in rows if a["failover_s"] is not None]
    return {
        "attempts": len(rows),
        "wall_s": wall,
        "useful_s": useful,
        "ettr": useful / wall if wall > 0 else None,
        "gpu_hours": sum(a["gpu_hours"] for a in rows),
        "dollars": sum(a["dollars"] for a in rows),
        "steps_gained": sum(a["steps_gained"] for a in rows),
        "steps_lost": sum(a["steps_lost"] for a in rows),
        "failover_s": failovers,
        "failover_mean_s": statistics.fmean(failovers) if failovers else None,
    }


def _by_provider(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    providers: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        providers.setdefault(row["provider"], []).append(row)
    return {name: _summarise(items) for name, items in sorted(providers.items())}


def run_ledger(conn: sa.Connection, run_id: str, now: float) -> dict[str, Any]:
    """The ledger of one run: every attempt, the run's totals, and totals per provider."""
    run_rows.require(conn, run_id)
    rows = _attempt_ledger(conn, run_id, now)
    return {"run_id": run_id, "attempts": rows, "total": _summarise(rows), "providers": _by_provider(rows)}


def provider_ledger(conn: sa.Connection, now: float) -> dict[str, Any]:
    """Totals per provider over every run."""
    run_ids = conn.execute(sa.select(runs.c.run_id)).scalars().all()
    rows = [row for run_id in run_ids for row in _attempt_ledger(conn, run_id, now)]
    return {"total": _summarise(rows), "providers": _by_provider(rows)}


def _attempt_ledger(conn: sa.Connection, run_id: str, now: float) -> list[dict[str, Any]]:
    tries = conn.execute(
        sa.select(attempts, workers.c.provider)
        .select_from(attempts.outerjoin(workers, workers.c.worker_id == attempts.c.worker_id))
        .where(attempts.c.run_id == run_id)
        .order_by(attempts.c.epoch)
    ).mappings().all()
    points = conn.execute(
        sa.select(metrics.c.epoch, metrics.c.step, sa.func.min(metrics.c.ts))
        .where(metrics.c.run_id == run_id)
        .group_by(metrics.c.epoch, metrics.c.step)
    ).all()
    progress: dict[int, list[tuple[int, float]]] = {}
    for epoch, step, ts in points:
        progress.setdefault(epoch, []).append((step, ts))
    for items in progress.values():
        items.sort(key=lambda p: p[1])
    out = []
    for i, a in enumerate(tries):
        ended = a["ended_at"] if a["ended_at"] is not None else now
        wall = max(0.0, ended - a["granted_at"])
        step_end = a["step_end"] if a["step_end"] is not None else a["step_start"]
        gained = max(0, step_end - a["step_start"])
        lost = a["steps_lost"] or 0
        seen = progress.get(a["epoch"], [])
        per_step = None
        if len(seen) >= 2 and seen[-1][0] > seen[0][0]:
            per_step = (seen[-1][1] - seen[0][1]) / (seen[-1][0] - seen[0][0])
        failover = None
        if a["outcome"] not in (None, AttemptOutcome.SUCCEEDED) and i + 1 < len(tries) and seen:
            following = progress.get(tries[i + 1]["epoch"], [])
            if following:
                failover = max(0.0, following[0][1] - seen[-1][1])
        gpus = a["gpus"] or 0
        out.append({
            "epoch": a["epoch"],
            "worker_id": a["worker_id"],
            "provider": a["provider"] or "unknown",
            "outcome": a["outcome"],
            "wall_s": wall,
            "steps_gained": gained,
            "steps_lost": lost,
            "seconds_per_step": per_step,
            "useful_s": min(wall, max(0, gained - lost) * per_step) if per_step else 0.0,
            "gpus": gpus,
            "price_per_hour": a["price_per_hour"],
            "gpu_hours": wall * gpus / 3600,
            "dollars": wall / 3600 * (a["price_per_hour"] or 0.0),
            "failover_s": failover,
        })
    return out
