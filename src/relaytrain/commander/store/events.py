"""The event log: what happened to runs, workers and hosts, in order."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .schema import events

# Built once: run on every grant, release and checkpoint (see leases.py on why).
_INSERT_EVENT = events.insert()


def add(conn: sa.Connection, run_id: str | None, kind: str, message: str, data: dict | None, now: float) -> None:
    """Append one event."""
    conn.execute(_INSERT_EVENT, {"run_id": run_id, "ts": now, "kind": kind, "message": message, "data": data})


def list_for_run(conn: sa.Connection, run_id: str, *, after: int, limit: int) -> dict[str, Any]:
    """A page of a run's events after the id ``after``, oldest first."""
    rows = conn.execute(
        sa.select(events).where(events.c.run_id == run_id, events.c.id > after).order_by(events.c.id).limit(limit)
    ).mappings().all()
    items = [dict(r) for r in rows]
    return {"items": items, "next_after": items[-1]["id"] if len(items) == limit else None}
