"""SSH hosts (DESIGN §10): every SQL statement behind ``relay hosts``, the GPU poller and the
autoscaler lives here.

A host row keeps its last poll (``gpus``, each with ``idle``) and the workers the autoscaler
started there (``assignments``, each holding some GPU indices). :meth:`HostsMixin.reserve_gpus`
is one transaction with the host row locked, so no two workers are ever started on the same
GPU, even by two commander replicas.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from relaytrain.errors import InvalidState, NotFound

from .schema import hosts, runs, workers

SPEC_FIELDS = ("address", "port", "user", "key_path", "known_hosts", "labels", "price_per_hour", "python", "workdir")


def free_gpus(row: dict[str, Any]) -> list[int]:
    """GPU indices idle at the last poll and held by no worker started there."""
    held = {g for a in row["assignments"] for g in a["gpus"]}
    return [g["index"] for g in row["gpus"] if g.get("idle") and g["index"] not in held]


def _host_dict(row: Any) -> dict[str, Any]:
    host = {k: row[k] for k in row.keys() if k != "username"}
    host["user"] = row["username"]
    host["free_gpus"] = free_gpus(host)
    return host


class HostsMixin:
    """Methods of :class:`Store` for SSH hosts. Needs ``_write``, ``_read`` and ``_event``."""

    # -- records ---------------------------------------------------------------------------

    def put_host(self, name: str, spec: dict[str, Any], *, now: float | None = None) -> dict[str, Any]:
        """Create a host or change its connection fields (its poll and its workers are kept)."""
        now = time.time() if now is None else now
        values = {("username" if k == "user" else k): spec[k] for k in SPEC_FIELDS}
        with self._write() as conn:
            exists = conn.execute(sa.select(hosts.c.name).where(hosts.c.name == name).with_for_update()).first()
            if exists:
                conn.execute(hosts.update().where(hosts.c.name == name).values(updated_at=now, **values))
            else:
                conn.execute(hosts.insert().values(name=name, enabled=True, reachable=None, last_error=None, gpus=[],
                                                   assignments=[], polled_at=None, created_at=now, updated_at=now,
                                                   **values))
                self._event(conn, None, "host", f"host {name} added ({spec['user']}@{spec['address']})",
                            {"host": name}, now)
        return self.get_host(name)

    def get_host(self, name: str) -> dict[str, Any]:
        with self._read() as conn:
            row = conn.execute(sa.select(hosts).where(hosts.c.name == name)).mappings().first()
        if row is None:
            raise NotFound(f"no host named {name!r}")
        return _host_dict(row)

    def list_hosts(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(sa.select(hosts).order_by(hosts.c.name)).mappings().all()
        return [_host_dict(r) for r in rows]

    def remove_host(self, name: str, *, force: bool = False, now: float | None = None) -> None:
        """Forget a host. InvalidState while workers started there are alive, unless ``force``."""
        now = time.time() if now is None else now
        with self._write() as conn:
            row = conn.execute(sa.select(hosts).where(hosts.c.name == name).with_for_update()).mappings().first()
            if row is None:
                raise NotFound(f"no host named {name!r}")
            if row["assignments"] and not force:
                ids = ", ".join(a["worker_id"] for a in row["assignments"])
                raise InvalidState(f"host {name} runs workers started by the autoscaler ({ids}): stop them "
                                   "first (relay stack down), or force")
            conn.execute(hosts.delete().where(hosts.c.name == name))
            self._event(conn, None, "host", f"host {name} removed", {"host": name}, now)

    def set_host_enabled(self, name: str, enabled: bool, *, now: float | None = None) -> dict[str, Any]:
        """A disabled host is still polled, but the autoscaler starts nothing there."""
        now = time.time() if now is None else now
        with self._write() as conn:
            if not conn.execute(hosts.update().where(hosts.c.name == name)
                                .values(enabled=enabled, updated_at=now)).rowcount:
                raise NotFound(f"no host named {name!r}")
        return self.get_host(name)

    # -- the poller ------------------------------------------------------------------------

    def record_poll(self, name: str, *, gpus: list[dict[str, Any]] | None, error: str | None,
                    checked_pids: set[int] | None = None, alive_pids: set[int] | None = None,
                    now: float | None = None) -> list[dict[str, Any]]:
        """Store one poll. ``gpus`` None means unreachable (``error`` says why; the last GPUs stay
        for display). Workers whose pid was checked and found dead are dropped, freeing their
        GPUs; they are returned."""
        now = time.time() if now is None else now
        checked, alive = checked_pids or set(), alive_pids or set()
        with self._write() as conn:
            row = conn.execute(sa.select(hosts).where(hosts.c.name == name).with_for_update()).mappings().first()
            if row is None:
                return []  # removed while it was being polled
            gone = [a for a in row["assignments"] if a.get("pid") in checked and a["pid"] not in alive]
            values: dict[str, Any] = {"reachable": gpus is not None, "last_error": error, "polled_at": now,
                                      "assignments": [a for a in row["assignments"] if a not in gone]}
            if gpus is not None:
                values["gpus"] = gpus
            if row["reachable"] is not False and gpus is None:
                self._event(conn, None, "host", f"host {name} is unreachable: {error}", {"host": name}, now)
            for a in gone:
                self._event(conn, None, "host", f"worker {a['worker_id']} on {name} is gone; GPUs {a['gpus']} free",
                            {"host": name, "worker_id": a["worker_id"]}, now)
            conn.execute(hosts.update().where(hosts.c.name == name).values(**values))
        return gone

    # -- the autoscaler --------------------------------------------------------------------

    def reserve_gpus(self, name: str, *, worker_id: str, gpus: list[int], run_id: str | None = None,
                     now: float | None = None) -> bool:
        """Atomically hold ``gpus`` of an enabled, reachable host for a worker about to start.

        False (and nothing changes) when any of them is busy or already held.
        """
        now = time.time() if now is None else now
        with self._write() as conn:
            row = conn.execute(sa.select(hosts).where(hosts.c.name == name).with_for_update()).mappings().first()
            if row is None or not row["enabled"] or not row["reachable"]:
                return False
            if not gpus or not set(gpus) <= set(free_gpus(dict(row))):
                return False
            held = {"worker_id": worker_id, "gpus": sorted(gpus), "pid": None, "run_id": run_id, "reserved_at": now}
            conn.execute(hosts.update().where(hosts.c.name == name)
                         .values(assignments=[*row["assignments"], held], updated_at=now))
        return True

    def assign_worker(self, name: str, worker_id: str, handle: dict[str, Any], *, now: float | None = None) -> None:
        """Record the started worker's pid and files on its reservation."""
        now = time.time() if now is None else now
        with self._write() as conn:
            row = conn.execute(sa.select(hosts).where(hosts.c.name == name).with_for_update()).mappings().first()
            if row is None:
                raise NotFound(f"no host named {name!r}")
            updated = [{**a, **handle, "started_at": now} if a["worker_id"] == worker_id else a
                       for a in row["assignments"]]
            conn.execute(hosts.update().where(hosts.c.name == name).values(assignments=updated, updated_at=now))
            self._event(conn, None, "host", f"autoscaler started {worker_id} on {name} (pid {handle.get('pid')})",
                        {"host": name, "worker_id": worker_id}, now)

    def release_gpus(self, name: str, worker_id: str, *, error: str | None = None, now: float | None = None) -> None:
        """Drop a worker's reservation (it failed to start, or was stopped); ``error`` goes on the host."""
        now = time.time() if now is None else now
        with self._write() as conn:
            row = conn.execute(sa.select(hosts).where(hosts.c.name == name).with_for_update()).mappings().first()
            if row is None:
                return
            kept = [a for a in row["assignments"] if a["worker_id"] != worker_id]
            values: dict[str, Any] = {"assignments": kept, "updated_at": now}
            if error:
                values["last_error"] = error
            conn.execute(hosts.update().where(hosts.c.name == name).values(**values))

    def gpu_demand(self, *, now: float | None = None) -> list[dict[str, Any]]:
        """Queued runs that could start now: ``run_id``, ``gpus``, ``labels``, best first."""
        now = time.time() if now is None else now
        parent = runs.alias("parent")
        ready_parent = sa.select(parent.c.run_id).where(parent.c.run_id == runs.c.depends_on,
                                                        parent.c.status == "succeeded").exists()
        query = (
            sa.select(runs.c.run_id, runs.c.gpus, runs.c.labels)
            .where(runs.c.status == "queued", runs.c.not_before <= now,
                   sa.or_(runs.c.depends_on.is_(None), ready_parent))
            .order_by(runs.c.priority.desc(), runs.c.created_at, runs.c.run_id)
        )
        with self._read() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def worker_activity(self, worker_ids: list[str]) -> dict[str, str]:
        """For each id: ``busy`` (holds a running run), ``idle`` (registered, holds none) or ``absent``."""
        if not worker_ids:
            return {}
        with self._read() as conn:
            registered = set(conn.execute(sa.select(workers.c.worker_id)
                                          .where(workers.c.worker_id.in_(worker_ids))).scalars())
            busy = set(conn.execute(sa.select(runs.c.holder)
                                    .where(runs.c.status == "running", runs.c.holder.in_(worker_ids))).scalars())
        return {w: "busy" if w in busy else "idle" if w in registered else "absent" for w in worker_ids}
