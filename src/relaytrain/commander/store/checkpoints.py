"""Reading durable checkpoints. (Committing one is a fenced write: :func:`.leases.commit_checkpoint`.)"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .schema import checkpoints

# Built once: run on every grant (see leases.py on why).
_DURABLE = (
    sa.select(checkpoints)
    .where(checkpoints.c.run_id == sa.bindparam("run_id"), checkpoints.c.durable.is_(True))
    .order_by(checkpoints.c.step.desc(), checkpoints.c.epoch.desc())
    .limit(sa.bindparam("limit"))
)


def ref(row: Any) -> dict[str, Any]:
    """A checkpoint row as the API's ``CheckpointRef``."""
    out = {k: row[k] for k in ("run_id", "step", "epoch", "uri", "manifest_sha256", "created_at", "revision")}
    out["store_run_id"] = row["store_run_id"] or row["run_id"]
    return out


def newest(conn: sa.Connection, run_id: str, *, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` durable checkpoints of a run, newest first."""
    return [ref(r) for r in conn.execute(_DURABLE, {"run_id": run_id, "limit": limit}).mappings().all()]


def latest(conn: sa.Connection, run_id: str, *, step: int | None = None,
           epoch: int | None = None) -> dict[str, Any] | None:
    """The newest durable checkpoint of a run (or the one at ``step``/``epoch``)."""
    if step is None:
        found = newest(conn, run_id, limit=1)
        return found[0] if found else None
    row = conn.execute(
        sa.select(checkpoints).where(checkpoints.c.run_id == run_id, checkpoints.c.durable.is_(True),
                                     checkpoints.c.step == step, checkpoints.c.epoch == epoch)
    ).mappings().first()
    return ref(row) if row else None


def durable(conn: sa.Connection, run_id: str) -> list[dict[str, Any]]:
    """Every durable checkpoint of a run, oldest first."""
    rows = conn.execute(
        sa.select(checkpoints)
        .where(checkpoints.c.run_id == run_id, checkpoints.c.durable.is_(True))
        .order_by(checkpoints.c.step, checkpoints.c.epoch)
    ).mappings().all()
    return [ref(r) for r in rows]


def at_step(conn: sa.Connection, run_id: str, step: int) -> dict[str, Any] | None:
    """The durable checkpoint of a run at ``step`` (newest epoch), or None."""
    row = conn.execute(
        sa.select(checkpoints)
        .where(checkpoints.c.run_id == run_id, checkpoints.c.step == step, checkpoints.c.durable.is_(True))
        .order_by(checkpoints.c.epoch.desc()).limit(1)
    ).mappings().first()
    return ref(row) if row else None


def insert_inherited(conn: sa.Connection, run_id: str, parent: dict[str, Any], now: float) -> None:
    """Give a fork its origin's checkpoint (epoch 0) to resume from; its files stay under the origin."""
    conn.execute(checkpoints.insert().values(
        run_id=run_id, step=parent["step"], epoch=0, uri=parent["uri"], manifest_sha256=parent["manifest_sha256"],
        store_run_id=parent["store_run_id"], revision=parent["revision"], durable=True, created_at=now))
