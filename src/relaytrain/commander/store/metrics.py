"""A run's metric series (DESIGN §13: curves): one series per run and metric name across every
attempt, each step shown once.

When attempt k+1 resumes from step N, the points that earlier attempts reported past N are
retrained, so they are marked ``superseded`` (:func:`supersede`, called in the transaction of the
grant and again in that of the holder's resume report, which may name an older checkpoint than
the grant offered). They are kept and can be asked for, but are not part of the series.

Reading a long series for a chart, :func:`series` downsamples on the database: the step range is
cut into buckets of equal width and each bucket gives its lowest and highest point (min/max
buckets, which keep every spike a chart could show), plus the series' first and last point.
Every read of a series seeks the series index (run, name, superseded, step, value): the cost is
that of the points returned and of the index entries in their buckets, never a sort or a read of
the table's rows for the whole series. The same statements run on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import sqlalchemy as sa

from relaytrain.api.status import RunStatus

from . import ledger
from .schema import metrics, runs

MAX_POINTS = 20_000
"""The most points per series a downsampled read may ask for."""
MIN_POINTS = 2
"""The fewest: the first and the last point."""

TOKENS_PER_S = "tokens_per_s"
"""The metric the built-in trainers report their throughput under (the Prometheus gauge reads it)."""

_POINT = (metrics.c.step, metrics.c.name, metrics.c.value, metrics.c.epoch, metrics.c.superseded)
_ORDER = (metrics.c.name, metrics.c.step, metrics.c.epoch, metrics.c.id)


def supersede(conn: sa.Connection, run_id: str, epoch: int, step: int) -> int:
    """Attempt ``epoch`` resumes from ``step``: mark every point of an earlier epoch past it
    superseded. Returns how many were marked."""
    if epoch <= 1:
        return 0
    return conn.execute(
        metrics.update()
        .where(metrics.c.run_id == run_id, metrics.c.epoch < epoch, metrics.c.step > step,
               metrics.c.superseded == sa.false())
        .values(superseded=True)
    ).rowcount


def metric_names(conn: sa.Connection, run_id: str) -> list[str]:
    """The names of a run's metrics, sorted: a loose index scan (one seek of the series index per
    name, not a read of every point), written as a recursive query that SQLite and PostgreSQL share."""
    first = sa.select(sa.func.min(metrics.c.name).label("name")).where(metrics.c.run_id == run_id)
    found = first.cte("found", recursive=True)
    following = (sa.select(sa.func.min(metrics.c.name))
                 .where(metrics.c.run_id == run_id, metrics.c.name > found.c.name).scalar_subquery())
    found = found.union_all(sa.select(following).where(found.c.name.is_not(None)))
    return list(conn.execute(sa.select(found.c.name).where(found.c.name.is_not(None))).scalars())


def series(conn: sa.Connection, run_id: str, *, names: list[str] | None = None, include_superseded: bool = False,
           max_points: int | None = None) -> list[dict[str, Any]]:
    """The points of a run's series (all, or those ``names``), ordered by name, step and epoch.
    ``max_points``: at most that many per series, downsampled (module docstring)."""
    flags = [False, True] if include_superseded else [False]
    where = [metrics.c.run_id == run_id, metrics.c.superseded.in_(flags)]
    if max_points is None:
        if names is not None:
            where.append(metrics.c.name.in_(names))
        rows = conn.execute(sa.select(*_POINT).where(*where).order_by(*_ORDER)).mappings().all()
        return [dict(r) for r in rows]
    if max_points < MIN_POINTS:
        raise ValueError(f"max_points: at least {MIN_POINTS} (got {max_points})")
    whole: list[str] = []
    ids: set[int] = set()
    for name in sorted(set(metric_names(conn, run_id) if names is None else names)):
        one = [*where, metrics.c.name == name]
        ends = _ends(conn, run_id, name, flags)
        if ends is None:
            continue
        if _count_upto(conn, one, max_points + 1) <= max_points:
            whole.append(name)
        else:
            ids.update(ends.ids)
            ids.update(_bucket_extremes(conn, one, ends.first, ends.last, (max_points - 2) // 2))
    out: list[dict[str, Any]] = []
    if whole:
        query = sa.select(*_POINT).where(*where, metrics.c.name.in_(whole))
        out.extend(dict(r) for r in conn.execute(query).mappings())
    if ids:
        out.extend(dict(r) for r in conn.execute(sa.select(*_POINT).where(metrics.c.id.in_(sorted(ids)))).mappings())
    out.sort(key=lambda p: (p["name"], p["step"], p["epoch"]))
    return out


class _Ends(NamedTuple):
    first: int
    last: int
    ids: tuple[int, int]


def _ends(conn: sa.Connection, run_id: str, name: str, flags: list[bool]) -> _Ends | None:
    """A series' first and last step and point ids (None: no point). One seek of the index per
    end and ``superseded`` value: across two values of ``superseded`` the index is not in step order."""
    found = []
    for flag in flags:
        seek = sa.select(metrics.c.step, metrics.c.id).where(
            metrics.c.run_id == run_id, metrics.c.name == name, metrics.c.superseded == flag)
        for order in ((metrics.c.step, metrics.c.id), (metrics.c.step.desc(), metrics.c.id.desc())):
            row = conn.execute(seek.order_by(*order).limit(1)).first()
            if row is not None:
                found.append(tuple(row))
    if not found:
        return None
    first, last = min(found), max(found)
    return _Ends(first[0], last[0], (first[1], last[1]))


def _count_upto(conn: sa.Connection, where: list[Any], limit: int) -> int:
    """How many points match, counting no further than ``limit``."""
    head = sa.select(metrics.c.id).where(*where).limit(limit).subquery()
    return conn.execute(sa.select(sa.func.count()).select_from(head)).scalar_one()


def _bucket_extremes(conn: sa.Connection, where: list[Any], first: int, last: int, buckets: int) -> set[int]:
    """The ids of the lowest and highest point of each of ``buckets`` buckets of equal step width
    between ``first`` and ``last``.

    One statement: a recursive query counts the buckets, and for each, two seeks of the series
    index take the range's lowest and highest value (the index holds step and value, so no row
    of the table is read; a series' rows lie scattered through it). Neither a sort of the series
    nor a temporary table of its points, on SQLite and PostgreSQL alike."""
    if buckets < 1:
        return set()
    span = last - first + 1
    start = sa.select(sa.cast(sa.literal(0), sa.BigInteger).label("i")).cte("bucket", recursive=True)
    bucket = start.union_all(sa.select(start.c.i + 1).where(start.c.i < buckets - 1))
    low = first + (bucket.c.i * span) // buckets  # BigInteger: i * span overflows a 32-bit integer
    high = first + ((bucket.c.i + 1) * span) // buckets
    in_bucket = sa.select(metrics.c.id).where(*where, metrics.c.step >= low, metrics.c.step < high)
    lowest = in_bucket.order_by(metrics.c.value, metrics.c.id).limit(1).scalar_subquery()
    highest = in_bucket.order_by(metrics.c.value.desc(), metrics.c.id).limit(1).scalar_subquery()
    found: set[int] = set()
    for pair in conn.execute(sa.select(lowest, highest).select_from(bucket)):
        found.update(i for i in pair if i is not None)
    return found


def running_gauges(conn: sa.Connection, now: float) -> list[dict[str, Any]]:
    """Per running run (only those, so a scrape's labels stay bounded by the workers): status, step,
    max_steps, epoch, the latest ``tokens_per_s`` (None before any) and the ETTR so far."""
    running = conn.execute(
        sa.select(runs.c.run_id, runs.c.status, runs.c.step, runs.c.max_steps, runs.c.epoch)
        .where(runs.c.status == RunStatus.RUNNING).order_by(runs.c.run_id)
    ).mappings().all()
    latest = (
        sa.select(metrics.c.value)
        .where(metrics.c.run_id == sa.bindparam("run_id"), metrics.c.name == TOKENS_PER_S,
               metrics.c.superseded == sa.false())
        .order_by(metrics.c.step.desc(), metrics.c.epoch.desc())
        .limit(1)
    )
    out = []
    for run in running:
        gauges = dict(run)
        gauges["tokens_per_s"] = conn.execute(latest, {"run_id": run["run_id"]}).scalar()
        gauges["ettr"] = ledger.run_ledger(conn, run["run_id"], now)["total"]["ettr"]
        out.append(gauges)
    return out
