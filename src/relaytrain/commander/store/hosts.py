"""SSH hosts (DESIGN §10): every SQL statement behind ``relay hosts``, the GPU poller and the
autoscaler lives here. Functions of an open connection; :class:`relaytrain.commander.store.Store`
opens the transaction.

A host row keeps its last poll (``gpus``, each with ``idle``) and the workers the autoscaler
started there (``assignments``, each holding some GPU indices, with its ``role``: a worker, or a
rollout worker for one run). :func:`reserve_gpus` runs with
the host row locked, so no two workers are ever started on the same GPU, even by two commander
replicas.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from relaytrain.api.status import TERMINAL, RunStatus, WorkerRole
from relaytrain.config import SshHostFields
from relaytrain.errors import InvalidState, NotFound

from . import events
from .leases import CLAIMABLE_NOW
from .schema import hosts, rollout_workers, runs, workers

SPEC_FIELDS = tuple(SshHostFields.model_fields)
"""The fields of a host that ``relay hosts add`` (``PUT /api/v1/hosts/{name}``) sets."""


def free_gpus(row: dict[str, Any]) -> list[int]:
    """GPU indices idle at the last poll and held by no worker started there."""
    held = {g for a in row["assignments"] for g in a["gpus"]}
    return [g["index"] for g in row["gpus"] if g.get("idle") and g["index"] not in held]


def _host_dict(row: Any) -> dict[str, Any]:
    host = {k: row[k] for k in row.keys() if k != "username"}
    host["user"] = row["username"]
    host["free_gpus"] = free_gpus(host)
    return host


def _locked(conn: sa.Connection, name: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(hosts).where(hosts.c.name == name).with_for_update()).mappings().first()
    return dict(row) if row is not None else None


# -- records -------------------------------------------------------------------------------------


def put_host(conn: sa.Connection, name: str, spec: dict[str, Any], now: float) -> None:
    """Create a host or change its connection fields (its poll and its workers are kept)."""
    values = {("username" if k == "user" else k): spec[k] for k in SPEC_FIELDS}
    if _locked(conn, name) is not None:
        conn.execute(hosts.update().where(hosts.c.name == name).values(updated_at=now, **values))
        return
    conn.execute(hosts.insert().values(name=name, enabled=True, reachable=None, last_error=None, gpus=[],
                                       assignments=[], polled_at=None, created_at=now, updated_at=now, **values))
    events.add(conn, None, "host", f"host {name} added ({spec['user']}@{spec['address']})", {"host": name}, now)


def get_host(conn: sa.Connection, name: str) -> dict[str, Any]:
    row = conn.execute(sa.select(hosts).where(hosts.c.name == name)).mappings().first()
    if row is None:
        raise NotFound(f"no host named {name!r}")
    return _host_dict(row)


def list_hosts(conn: sa.Connection) -> list[dict[str, Any]]:
    return [_host_dict(r) for r in conn.execute(sa.select(hosts).order_by(hosts.c.name)).mappings().all()]


def remove_host(conn: sa.Connection, name: str, *, force: bool, now: float) -> None:
    """Forget a host. InvalidState while workers started there are alive, unless ``force``."""
    row = _locked(conn, name)
    if row is None:
        raise NotFound(f"no host named {name!r}")
    if row["assignments"] and not force:
        ids = ", ".join(a["worker_id"] for a in row["assignments"])
        raise InvalidState(f"host {name} runs workers started by the autoscaler ({ids}): stop them "
                           "first (relay stack down), or force")
    conn.execute(hosts.delete().where(hosts.c.name == name))
    events.add(conn, None, "host", f"host {name} removed", {"host": name}, now)


def set_host_enabled(conn: sa.Connection, name: str, enabled: bool, now: float) -> None:
    """A disabled host is still polled, but the autoscaler starts nothing there."""
    if not conn.execute(hosts.update().where(hosts.c.name == name).values(enabled=enabled, updated_at=now)).rowcount:
        raise NotFound(f"no host named {name!r}")


# -- the poller ----------------------------------------------------------------------------------


def record_poll(conn: sa.Connection, name: str, *, gpus: list[dict[str, Any]] | None, error: str | None,
                checked: set[int], alive: set[int], now: float) -> list[dict[str, Any]]:
    """Store one poll. ``gpus`` None means unreachable (``error`` says why; the last GPUs stay
    for display). Workers whose pid was checked and found dead are dropped, freeing their
    GPUs; they are returned."""
    row = _locked(conn, name)
    if row is None:
        return []  # removed while it was being polled
    gone = [a for a in row["assignments"] if a.get("pid") in checked and a["pid"] not in alive]
    values: dict[str, Any] = {"reachable": gpus is not None, "last_error": error, "polled_at": now,
                              "assignments": [a for a in row["assignments"] if a not in gone]}
    if gpus is not None:
        values["gpus"] = gpus
    if row["reachable"] is not False and gpus is None:
        events.add(conn, None, "host", f"host {name} is unreachable: {error}", {"host": name}, now)
    for a in gone:
        events.add(conn, None, "host", f"worker {a['worker_id']} on {name} is gone; GPUs {a['gpus']} free",
                   {"host": name, "worker_id": a["worker_id"]}, now)
    conn.execute(hosts.update().where(hosts.c.name == name).values(**values))
    return gone


# -- the autoscaler ------------------------------------------------------------------------------


def reserve_gpus(conn: sa.Connection, name: str, *, worker_id: str, gpus: list[int], run_id: str | None,
                 role: WorkerRole, now: float) -> bool:
    """Hold ``gpus`` of an enabled, reachable host for a worker (of ``role``) about to start, the
    host row locked. False (and nothing changes) when any of them is busy or already held."""
    row = _locked(conn, name)
    if row is None or not row["enabled"] or not row["reachable"]:
        return False
    if not gpus or not set(gpus) <= set(free_gpus(row)):
        return False
    held = {"worker_id": worker_id, "gpus": sorted(gpus), "pid": None, "run_id": run_id, "role": role.value,
            "reserved_at": now}
    conn.execute(hosts.update().where(hosts.c.name == name)
                 .values(assignments=[*row["assignments"], held], updated_at=now))
    return True


def assign_worker(conn: sa.Connection, name: str, worker_id: str, handle: dict[str, Any], now: float) -> None:
    """Record the started worker's pid and files on its reservation."""
    row = _locked(conn, name)
    if row is None:
        raise NotFound(f"no host named {name!r}")
    updated = [{**a, **handle, "started_at": now} if a["worker_id"] == worker_id else a for a in row["assignments"]]
    conn.execute(hosts.update().where(hosts.c.name == name).values(assignments=updated, updated_at=now))
    events.add(conn, None, "host", f"autoscaler started {worker_id} on {name} (pid {handle.get('pid')})",
               {"host": name, "worker_id": worker_id}, now)


def release_gpus(conn: sa.Connection, name: str, worker_id: str, *, error: str | None, now: float) -> None:
    """Drop a worker's reservation (it failed to start, or was stopped); ``error`` goes on the host."""
    row = _locked(conn, name)
    if row is None:
        return
    values: dict[str, Any] = {"assignments": [a for a in row["assignments"] if a["worker_id"] != worker_id],
                              "updated_at": now}
    if error:
        values["last_error"] = error
    conn.execute(hosts.update().where(hosts.c.name == name).values(**values))


def gpu_demand(conn: sa.Connection, now: float) -> list[dict[str, Any]]:
    """Queued runs that could start now: ``run_id``, ``gpus``, ``labels``, best first."""
    query = (
        sa.select(runs.c.run_id, runs.c.gpus, runs.c.labels)
        .where(*CLAIMABLE_NOW)
        .order_by(runs.c.priority.desc(), runs.c.created_at, runs.c.run_id)
    )
    return [dict(r) for r in conn.execute(query, {"now": now}).mappings().all()]


def worker_activity(conn: sa.Connection, worker_ids: list[str]) -> dict[str, str]:
    """For each id: ``busy`` (holds a running run), ``idle`` (registered, holds none), ``rollout``
    (registered as a rollout worker) or ``absent`` (never registered, as either)."""
    if not worker_ids:
        return {}
    registered = set(conn.execute(sa.select(workers.c.worker_id).where(workers.c.worker_id.in_(worker_ids))).scalars())
    busy = set(conn.execute(sa.select(runs.c.holder)
                            .where(runs.c.status == RunStatus.RUNNING, runs.c.holder.in_(worker_ids))).scalars())
    generating = set(conn.execute(sa.select(rollout_workers.c.worker_id)
                                  .where(rollout_workers.c.worker_id.in_(worker_ids))).scalars())
    return {w: "busy" if w in busy else "idle" if w in registered else "rollout" if w in generating else "absent"
            for w in worker_ids}


def ended_runs(conn: sa.Connection, run_ids: list[str]) -> set[str]:
    """Those of ``run_ids`` that ended (or no longer exist): their rollout workers have nothing to do."""
    if not run_ids:
        return set()
    found = dict(conn.execute(sa.select(runs.c.run_id, runs.c.status).where(runs.c.run_id.in_(run_ids))).all())
    return {r for r in run_ids if r not in found or found[r] in TERMINAL}
