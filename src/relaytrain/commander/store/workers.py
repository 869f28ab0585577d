"""Workers: registration, heartbeats, and who holds what. Functions of an open connection."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from relaytrain.api.models import WORKER_DEAD_AFTER_S
from relaytrain.api.status import RunStatus
from relaytrain.errors import NotFound

from . import events
from .schema import runs, workers

_CURRENT_RUN = (
    sa.select(runs.c.run_id).where(runs.c.holder == workers.c.worker_id, runs.c.status == RunStatus.RUNNING)
    .limit(1).scalar_subquery()
)


def _resource_values(resources: dict[str, Any]) -> dict[str, Any]:
    return {"gpus": resources.get("gpus", []), "labels": resources.get("labels", {}),
            "price_per_hour": resources.get("price_per_hour")}


def register(conn: sa.Connection, worker_id: str, *, provider: str, hostname: str | None, version: str | None,
             resources: dict[str, Any], kinds: list[str] | None, now: float) -> None:
    """Create or refresh a worker's record; ``kinds``: those it serves (None: all)."""
    values = {"provider": provider, "hostname": hostname, "version": version, "last_heartbeat": now,
              "kinds": list(kinds) if kinds is not None else None, **_resource_values(resources)}
    if conn.execute(sa.select(workers.c.worker_id).where(workers.c.worker_id == worker_id)).first():
        conn.execute(workers.update().where(workers.c.worker_id == worker_id).values(**values))
    else:
        conn.execute(workers.insert().values(worker_id=worker_id, registered_at=now, **values))
        events.add(conn, None, "worker", f"worker {worker_id} registered", {"worker_id": worker_id}, now)


def heartbeat(conn: sa.Connection, worker_id: str, *, resources: dict[str, Any] | None,
              health: dict[str, Any] | None = None, now: float) -> None:
    """The worker is alive (and, with ``resources``, offers these now; with ``health``, its machine
    is in this condition: a change is recorded as an event). NotFound before it registered."""
    values: dict[str, Any] = {"last_heartbeat": now, **(_resource_values(resources) if resources is not None else {})}
    if health is not None:
        was = conn.execute(sa.select(workers.c.condition, workers.c.condition_reason)
                           .where(workers.c.worker_id == worker_id)).first()
        changed = was is not None and (was.condition, was.condition_reason) != (health["condition"], health["reason"])
        if changed:
            values.update(condition=health["condition"], condition_reason=health["reason"], condition_since=now)
            said = f": {health['reason']}" if health["reason"] else ""
            events.add(conn, None, "worker", f"worker {worker_id} is {health['condition']}{said}",
                       {"worker_id": worker_id, "condition": health["condition"]}, now)
    if not conn.execute(workers.update().where(workers.c.worker_id == worker_id).values(**values)).rowcount:
        raise NotFound(f"no worker named {worker_id!r}: register first")


def listing(conn: sa.Connection, now: float, *, worker_id: str | None = None) -> list[dict[str, Any]]:
    """Every worker (or the one named), with the run it holds and whether it is alive at ``now``."""
    query = sa.select(workers, _CURRENT_RUN.label("current_run")).order_by(workers.c.worker_id)
    if worker_id is not None:
        query = query.where(workers.c.worker_id == worker_id)
    return [
        {
            "worker_id": r["worker_id"],
            "provider": r["provider"],
            "hostname": r["hostname"],
            "version": r["version"],
            "resources": {"gpus": r["gpus"], "labels": r["labels"], "price_per_hour": r["price_per_hour"]},
            "registered_at": r["registered_at"],
            "last_heartbeat": r["last_heartbeat"],
            "current_run": r["current_run"],
            "kinds": r["kinds"],
            "alive": now - r["last_heartbeat"] <= WORKER_DEAD_AFTER_S,
            "condition": r["condition"],
            "condition_reason": r["condition_reason"],
            "condition_since": r["condition_since"],
        }
        for r in conn.execute(query).mappings().all()
    ]
