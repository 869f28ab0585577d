"""Runs: submitting, reading, cancelling, and moving a run to a new status. Functions of an
open connection; :class:`relaytrain.commander.store.Store` opens the transaction."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from relaytrain.api.status import TERMINAL, RunStatus
from relaytrain.config import RunConfig, run_config_dict
from relaytrain.errors import InvalidState, NotFound, RunExists

from . import checkpoints as ckpts
from . import events
from .schema import attempts, runs

_SUMMARY_COLUMNS = [c for c in runs.c if c.name not in ("config", "gpus", "labels", "lease_ttl_s", "not_before",
                                                        "cancel_requested", "depends_on", "source_run",
                                                        "avoid_worker", "avoid_until")]
_HIDDEN_ATTEMPT_FIELDS = ("id", "run_id", "last_renewed_at", "gpus", "price_per_hour")


def require(conn: sa.Connection, run_id: str) -> None:
    """NotFound unless the run exists."""
    if conn.execute(sa.select(runs.c.run_id).where(runs.c.run_id == run_id)).first() is None:
        raise NotFound(f"no run named {run_id!r}")


def locked(conn: sa.Connection, run_id: str) -> dict[str, Any]:
    """The run's row, locked for update; NotFound if there is none."""
    row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id).with_for_update()).mappings().first()
    if row is None:
        raise NotFound(f"no run named {run_id!r}")
    return dict(row)


def insert(conn: sa.Connection, config: RunConfig, now: float, *,
           resume_from: dict[str, Any] | None = None) -> None:
    """Queue a validated run. RunExists if the id is taken; NotFound if init_from names no run.
    ``resume_from`` (a checkpoint ref of another run) makes a fork that resumes it."""
    depends_on = config.init_from.run if config.init_from else None
    source_run = config.trainer.source_run if config.kind == "eval" else None
    if conn.execute(sa.select(runs.c.run_id).where(runs.c.run_id == config.run_id)).first():
        raise RunExists(f"a run named {config.run_id!r} already exists")
    for field, name in (("init_from.run", depends_on), ("trainer.source_run", source_run)):
        if name is None:
            continue
        parent = conn.execute(sa.select(runs.c.status).where(runs.c.run_id == name)).first()
        if parent is None:
            raise NotFound(f"{field}: no run named {name!r}")
        if field == "init_from.run" and parent.status in (RunStatus.FAILED, RunStatus.CANCELLED):
            raise InvalidState(f"init_from.run: run {name!r} ended {parent.status}")
    conn.execute(
        runs.insert().values(
            run_id=config.run_id,
            kind=config.kind,
            config=run_config_dict(config),
            status=RunStatus.QUEUED,
            priority=config.priority,
            gpus=config.resources.gpus,
            labels=dict(config.resources.labels),
            depends_on=depends_on,
            source_run=source_run,
            max_steps=config.max_steps,
            step=0,
            epoch=0,
            lease_ttl_s=config.lease.ttl_s,
            retries_used=0,
            max_retries=config.retry.max_retries,
            not_before=now,
            cancel_requested=False,
            created_at=now,
            updated_at=now,
        )
    )
    if resume_from is not None:
        ckpts.insert_inherited(conn, config.run_id, resume_from, now)
    events.add(conn, config.run_id, "submitted", f"{config.kind} run submitted", None, now)


def cancel(conn: sa.Connection, run_id: str, now: float) -> None:
    """Cancel a queued run at once; ask the holder of a running one to stop (seen on renew)."""
    row = locked(conn, run_id)
    if row["status"] in TERMINAL:
        raise InvalidState(f"run {run_id} already ended {row['status']}")
    if row["status"] == RunStatus.QUEUED:
        set_status(conn, row, RunStatus.CANCELLED, now)
        events.add(conn, run_id, "cancelled", "cancelled while queued", None, now)
    else:
        conn.execute(runs.update().where(runs.c.run_id == run_id).values(cancel_requested=True, updated_at=now))
        events.add(conn, run_id, "cancel_requested", f"cancel asked of {row['holder']}", None, now)


def detail(conn: sa.Connection, run_id: str) -> dict[str, Any]:
    """One run: summary, config, attempts and latest durable checkpoint (not its evaluations)."""
    row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).mappings().first()
    if row is None:
        raise NotFound(f"no run named {run_id!r}")
    tries = conn.execute(
        sa.select(attempts).where(attempts.c.run_id == run_id).order_by(attempts.c.epoch)
    ).mappings().all()
    out = {k: v for k, v in row.items() if k not in ("gpus", "labels", "lease_ttl_s")}
    out["attempts"] = [{k: a[k] for k in a.keys() if k not in _HIDDEN_ATTEMPT_FIELDS} for a in tries]
    out["latest_checkpoint"] = ckpts.latest(conn, run_id)
    return out


def page(conn: sa.Connection, *, status: str | None, limit: int, offset: int) -> dict[str, Any]:
    """A page of runs, newest first."""
    query = sa.select(*_SUMMARY_COLUMNS)
    count = sa.select(sa.func.count()).select_from(runs)
    if status is not None:
        query = query.where(runs.c.status == status)
        count = count.where(runs.c.status == status)
    total = conn.execute(count).scalar_one()
    items = conn.execute(
        query.order_by(runs.c.created_at.desc(), runs.c.run_id).limit(limit).offset(offset)
    ).mappings().all()
    next_offset = offset + limit if offset + limit < total else None
    return {"items": [dict(r) for r in items], "total": total, "next_offset": next_offset}


def status_counts(conn: sa.Connection) -> dict[str, int]:
    rows = conn.execute(sa.select(runs.c.status, sa.func.count()).group_by(runs.c.status)).all()
    return {status: n for status, n in rows}


def set_status(conn: sa.Connection, run: dict, status: RunStatus, now: float, **values: Any) -> None:
    """Move a run off its lease (if any) to ``status``; a failed or cancelled run fails the runs
    that wait on it (``init_from``)."""
    conn.execute(
        runs.update()
        .where(runs.c.run_id == run["run_id"])
        .values(status=status, holder=None, lease_expires_at=None, updated_at=now,
                finished_at=now if status in TERMINAL else None, **values)
    )
    if status in (RunStatus.FAILED, RunStatus.CANCELLED):
        _fail_dependents(conn, run["run_id"], status, now)


def _fail_dependents(conn: sa.Connection, run_id: str, status: RunStatus, now: float) -> None:
    waiting = conn.execute(
        sa.select(runs.c.run_id).where(runs.c.depends_on == run_id, runs.c.status == RunStatus.QUEUED)
    ).scalars().all()
    for dependent in waiting:
        error = f"init_from run {run_id} ended {status}"
        conn.execute(
            runs.update()
            .where(runs.c.run_id == dependent)
            .values(status=RunStatus.FAILED, last_error=error, updated_at=now, finished_at=now)
        )
        events.add(conn, dependent, "failed", error, None, now)
        _fail_dependents(conn, dependent, RunStatus.FAILED, now)
