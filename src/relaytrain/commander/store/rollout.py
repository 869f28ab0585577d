"""The elastic rollout pool's discovery (DESIGN §11): every SQL statement behind the rollout
endpoints lives here. Functions of an open connection; :class:`relaytrain.commander.store.Store`
opens the transaction.

A run's trainer hosts a rollout manager; its worker announces the manager's URL (and, from then
on, the pool the manager sees) under its lease, fenced like progress (:func:`announce`). The
commander keeps one row per run and serves it to rollout workers only while the announcing epoch
still holds the run (:func:`unavailable` is that rule, the one place it is spelled): once the run
is handed off, the stale row is hidden until the new holder's trainer announces its own manager,
so rollout workers follow the run to its new machine by asking again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from relaytrain.api.status import TERMINAL, RunStatus
from relaytrain.config import RolloutConfig
from relaytrain.errors import NotFound

from . import events
from .leases import fenced_run
from .schema import rollout_endpoints, rollout_workers, runs

_RUN_COLUMNS = (runs.c.run_id, runs.c.status, runs.c.epoch, runs.c.lease_expires_at)


def unavailable(run: Mapping[str, Any], endpoint: Mapping[str, Any] | None, now: float) -> str | None:
    """Why the run's rollout manager is not served now (a message naming the run), or None when
    ``endpoint`` is the current one: the run is running, its lease is live, and the endpoint was
    announced under the run's current epoch."""
    run_id, status, epoch = run["run_id"], run["status"], run["epoch"]
    if status in TERMINAL:
        return f"run {run_id} ended {status}: it has no rollout manager"
    if status != RunStatus.RUNNING:
        return (f"run {run_id} is {status} (waiting for a worker, or being handed off): it has no rollout "
                "manager until a worker runs it")
    if run["lease_expires_at"] is None or run["lease_expires_at"] <= now:
        return f"run {run_id}: the lease of epoch {epoch} expired; the run is being handed off"
    if endpoint is None or endpoint["epoch"] != epoch:
        return f"run {run_id} (epoch {epoch}) has not announced a rollout manager yet"
    return None


def _endpoint_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("run_id", "epoch", "url", "secret", "version", "pool", "updated_at")}


def announce(conn: sa.Connection, run_id: str, worker_id: str, epoch: int, *, url: str, secret: str,
             version: int | None, pool: list[dict[str, Any]], now: float | None) -> dict[str, Any]:
    """Record where the trainer of ``(worker_id, epoch)`` hosts its rollout manager, under that live
    lease (else LeaseLost, changing nothing). The run row stays locked to the end of the
    transaction, so the upsert of the run's one row never races another announcement."""
    now = fenced_run(conn, run_id, worker_id, epoch, now, whole=False).now
    values = {"epoch": epoch, "url": url, "secret": secret, "version": version, "pool": pool, "updated_at": now}
    key = rollout_endpoints.c.run_id == run_id
    old = conn.execute(sa.select(rollout_endpoints.c.epoch, rollout_endpoints.c.url).where(key)).first()
    if old is None:
        conn.execute(rollout_endpoints.insert().values(run_id=run_id, **values))
    else:
        conn.execute(rollout_endpoints.update().where(key).values(**values))
    if old is None or (old.epoch, old.url) != (epoch, url):
        events.add(conn, run_id, "rollout", f"epoch {epoch} serves rollout workers at {url}",
                   {"epoch": epoch, "url": url}, now)
    return {"run_id": run_id, **values}


def endpoint(conn: sa.Connection, run_id: str, now: float) -> dict[str, Any]:
    """The run's current rollout manager; NotFound naming the run, or saying why there is none."""
    run = conn.execute(sa.select(*_RUN_COLUMNS).where(runs.c.run_id == run_id)).mappings().first()
    if run is None:
        raise NotFound(f"no run named {run_id!r}")
    row = conn.execute(sa.select(rollout_endpoints).where(rollout_endpoints.c.run_id == run_id)).mappings().first()
    why = unavailable(run, row, now)
    if why is not None:
        raise NotFound(why)
    return _endpoint_dict(row)


def _announced(conn: sa.Connection, now: float) -> list[Mapping[str, Any]]:
    """The running runs whose current rollout manager is served now (:func:`unavailable`), with
    their config, priority, creation time and the pool their manager reported."""
    query = (
        sa.select(*_RUN_COLUMNS, runs.c.config, runs.c.priority, runs.c.created_at, rollout_endpoints.c.pool,
                  rollout_endpoints.c.epoch.label("announced_epoch"))
        .join(rollout_endpoints, rollout_endpoints.c.run_id == runs.c.run_id)
        .where(runs.c.status == RunStatus.RUNNING, rollout_endpoints.c.epoch == runs.c.epoch)
    )
    return [row for row in conn.execute(query).mappings().all()
            if unavailable(row, {"epoch": row["announced_epoch"]}, now) is None]


def _rollout_config(row: Mapping[str, Any]) -> RolloutConfig:
    return RolloutConfig.model_validate(row["config"].get("rollout") or {})


def wanting(conn: sa.Connection, now: float) -> list[dict[str, Any]]:
    """The running runs whose current epoch announced a rollout manager, with the labels a rollout
    worker must offer (the run's ``rollout.labels``): fewest rollout workers first, then by the
    queue's order (highest priority, then oldest)."""
    found = []
    for row in _announced(conn, now):
        found.append(({"run_id": row["run_id"], "epoch": row["epoch"], "labels": _rollout_config(row).labels,
                       "rollout_workers": len(row["pool"])}, -row["priority"], row["created_at"]))
    found.sort(key=lambda f: (f[0]["rollout_workers"], f[1], f[2], f[0]["run_id"]))
    return [f[0] for f in found]


def autoscale_demand(conn: sa.Connection, now: float) -> list[dict[str, Any]]:
    """The runs the SSH autoscaler keeps rollout workers for: running, their manager served now,
    ``rollout.workers`` > 0. Each: ``run_id``, ``workers`` (how many it wants), ``labels`` (its
    ``rollout.labels``), ``pool`` (the ids of the rollout workers its manager reported), by the
    queue's order (highest priority, then oldest)."""
    rows = sorted(_announced(conn, now), key=lambda r: (-r["priority"], r["created_at"], r["run_id"]))
    wanted = [(row, _rollout_config(row)) for row in rows]
    return [{"run_id": row["run_id"], "workers": cfg.workers, "labels": cfg.labels,
             "pool": [p["worker_id"] for p in row["pool"]]} for row, cfg in wanted if cfg.workers > 0]


# -- rollout workers -----------------------------------------------------------------------------


def register_worker(conn: sa.Connection, worker_id: str, *, labels: dict[str, str], run_id: str | None,
                    now: float) -> None:
    """Create or refresh a rollout worker's record (a heartbeat too). NotFound if ``run_id`` names
    no run."""
    if run_id is not None and conn.execute(sa.select(runs.c.run_id).where(runs.c.run_id == run_id)).first() is None:
        raise NotFound(f"run_id: no run named {run_id!r}")
    values = {"labels": labels, "run_id": run_id, "last_seen": now}
    key = rollout_workers.c.worker_id == worker_id
    if conn.execute(sa.select(rollout_workers.c.worker_id).where(key).with_for_update()).first():
        conn.execute(rollout_workers.update().where(key).values(**values))
    else:
        conn.execute(rollout_workers.insert().values(worker_id=worker_id, registered_at=now, **values))
        events.add(conn, None, "rollout_worker", f"rollout worker {worker_id} registered",
                   {"worker_id": worker_id}, now)


def list_workers(conn: sa.Connection, *, worker_id: str | None = None) -> list[dict[str, Any]]:
    """Every rollout worker (or the one named), by id."""
    query = sa.select(rollout_workers).order_by(rollout_workers.c.worker_id)
    if worker_id is not None:
        query = query.where(rollout_workers.c.worker_id == worker_id)
    return [dict(r) for r in conn.execute(query).mappings().all()]
