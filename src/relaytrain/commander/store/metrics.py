"""A run's metric series (DESIGN §13: curves): one series per run and metric name across every
attempt, each step shown once.

When attempt k+1 resumes from step N, the points that earlier attempts reported past N are
retrained, so they are marked ``superseded`` (:func:`supersede`, called in the transaction of the
grant and again in that of the holder's resume report, which may name an older checkpoint than
the grant offered). They are kept and can be asked for, but are not part of the series.

Reading a long series for a chart, :func:`series` downsamples on the database: the step range is
cut into buckets of equal width and each bucket gives its lowest and highest point (min/max
buckets, which keep every spike a chart could show), plus the series' first and last point.
The same statements run on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

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


def names(conn: sa.Connection, run_id: str) -> list[str]:
    """The names of a run's metrics, sorted."""
    query = sa.select(metrics.c.name).where(metrics.c.run_id == run_id).distinct().order_by(metrics.c.name)
    return list(conn.execute(query).scalars())


def series(conn: sa.Connection, run_id: str, *, names: list[str] | None = None, include_superseded: bool = False,
           max_points: int | None = None) -> list[dict[str, Any]]:
    """The points of a run's series (all, or those ``names``), ordered by name, step and epoch.
    ``max_points``: at most that many per series, downsampled (module docstring)."""
    where = [metrics.c.run_id == run_id]
    if names is not None:
        where.append(metrics.c.name.in_(names))
    if not include_superseded:
        where.append(metrics.c.superseded == sa.false())
    if max_points is None:
        rows = conn.execute(sa.select(*_POINT).where(*where).order_by(*_ORDER)).mappings().all()
        return [dict(r) for r in rows]
    if max_points < MIN_POINTS:
        raise ValueError(f"max_points: at least {MIN_POINTS} (got {max_points})")
    sizes = conn.execute(
        sa.select(metrics.c.name, sa.func.count(), sa.func.min(metrics.c.step), sa.func.max(metrics.c.step))
        .where(*where).group_by(metrics.c.name)
    ).all()
    whole = [name for name, count, _, _ in sizes if count <= max_points]
    out: list[dict[str, Any]] = []
    if whole:
        query = sa.select(*_POINT).where(*where, metrics.c.name.in_(whole)).order_by(*_ORDER)
        out.extend(dict(r) for r in conn.execute(query).mappings())
    for name, count, first, last in sizes:
        if count > max_points:
            out.extend(_downsampled(conn, [*where, metrics.c.name == name], first, last, max_points))
    out.sort(key=lambda p: (p["name"], p["step"], p["epoch"]))
    return out


def _downsampled(conn: sa.Connection, where: list[Any], first: int, last: int, max_points: int) -> list[dict]:
    """At most ``max_points`` points of one series: its first and last, and the lowest and highest
    point of each of ``(max_points - 2) // 2`` buckets of equal step width."""
    keep: dict[int, dict[str, Any]] = {}
    ends = sa.select(metrics.c.id, *_POINT).where(*where)
    for order in ((metrics.c.step, metrics.c.epoch, metrics.c.id),
                  (metrics.c.step.desc(), metrics.c.epoch.desc(), metrics.c.id.desc())):
        row = conn.execute(ends.order_by(*order).limit(1)).mappings().one()
        keep[row["id"]] = dict(row)
    buckets = (max_points - 2) // 2
    if buckets:
        # BigInteger: (step - first) * buckets overflows PostgreSQL's 32-bit integer.
        bucket = (sa.cast(metrics.c.step - first, sa.BigInteger) * buckets) // (last - first + 1)
        picks = _extremes_sqlite if conn.dialect.name == "sqlite" else _extremes_window
        for query in picks(where, bucket):
            for row in conn.execute(query):
                keep.setdefault(row.id, {c.name: row._mapping[c.name] for c in _POINT})
    return [{k: v for k, v in p.items() if k != "id"} for p in keep.values()]


def _extremes_sqlite(where: list[Any], bucket: sa.ColumnElement) -> list[sa.Select]:
    """SQLite: one scan per extreme. With a single ``min()`` or ``max()`` aggregate, SQLite takes
    a group's bare columns from the row that holds the extreme (documented in "SELECT": "Bare
    columns in an aggregate query"), so no window and no sort of the series is needed."""
    return [
        sa.select(extreme(metrics.c.value).label("value"), metrics.c.id, metrics.c.step, metrics.c.name,
                  metrics.c.epoch, metrics.c.superseded).where(*where).group_by(bucket)
        for extreme in (sa.func.min, sa.func.max)
    ]


def _extremes_window(where: list[Any], bucket: sa.ColumnElement) -> list[sa.Select]:
    """Any other database (PostgreSQL): each bucket's first row by value, ascending and descending."""
    ranked = sa.select(
        metrics.c.id, *_POINT,
        sa.func.row_number().over(partition_by=bucket, order_by=(metrics.c.value, metrics.c.id)).label("lo"),
        sa.func.row_number().over(partition_by=bucket, order_by=(metrics.c.value.desc(), metrics.c.id)).label("hi"),
    ).where(*where).subquery()
    return [sa.select(ranked.c.id, *(ranked.c[c.name] for c in _POINT)).where(sa.or_(ranked.c.lo == 1,
                                                                                      ranked.c.hi == 1))]


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
