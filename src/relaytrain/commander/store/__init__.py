"""The commander's store: the one place that reads and writes its database.

The API layer calls named functions (``submit_run``, ``claim_run``, ``renew_lease``,
``release_lease``, ``commit_checkpoint``, …); each is one transaction. The same code runs
on SQLite (the default, ``./relay.db``) and PostgreSQL, and the same tests run on both.
"""

from __future__ import annotations

import collections
import hashlib
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import sqlalchemy as sa

from relaytrain.config import RunConfig, run_config_dict
from relaytrain.errors import InvalidState, NotFound, RunExists, StoreError

from . import engine as _engine
from .evals import EvalMixin
from .hosts import HostsMixin
from .leases import LeaseMixin
from .ledger import LedgerMixin
from .schema import TERMINAL_STATUSES, attempts, checkpoints, events, metrics, runs, tokens, workers

__all__ = ["Store", "hash_token"]


# Built once: run on every grant, release and checkpoint (see leases.py on why).
_INSERT_EVENT = events.insert()
_DURABLE_CHECKPOINTS = (
    sa.select(checkpoints)
    .where(checkpoints.c.run_id == sa.bindparam("run_id"), checkpoints.c.durable.is_(True))
    .order_by(checkpoints.c.step.desc(), checkpoints.c.epoch.desc())
    .limit(sa.bindparam("limit"))
)


def hash_token(token: str) -> str:
    """Tokens are random and long, so a plain sha256 is a safe way to store them."""
    return hashlib.sha256(token.encode()).hexdigest()


class Store(LeaseMixin, EvalMixin, LedgerMixin, HostsMixin):
    """All of the commander's state, behind named transactional functions."""

    def __init__(self, url: str, *, pool_size: int = 40) -> None:
        self.url = _engine.normalise_url(url)
        self.engine = _engine.make_engine(self.url, pool_size=pool_size)
        self.dialect = self.engine.dialect.name
        # SQLite admits one writer: queue writers in-process rather than in its busy handler,
        # whose sleeps would dominate tail latency.
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else nullcontext()
        self.counters: collections.Counter[str] = collections.Counter()

    # -- life cycle ------------------------------------------------------------------------

    def upgrade(self) -> None:
        """Bring the schema to the newest migration."""
        try:
            _engine.upgrade(self.engine)
        except sa.exc.OperationalError as exc:
            raise StoreError(f"cannot migrate {self.describe()}: {exc.orig}") from exc

    def revision(self) -> str | None:
        return _engine.current_revision(self.engine)

    def describe(self) -> str:
        """The database URL without its password."""
        return self.engine.url.render_as_string(hide_password=True)

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        with self._write_lock, self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(**{_engine.READONLY: True})
            with conn.begin():
                yield conn

    def _event(self, conn: sa.Connection, run_id: str | None, kind: str, message: str,
               data: dict | None, now: float) -> None:
        conn.execute(_INSERT_EVENT, {"run_id": run_id, "ts": now, "kind": kind, "message": message, "data": data})

    # -- runs ------------------------------------------------------------------------------

    def submit_run(self, config: RunConfig, *, now: float | None = None,
                   resume_from: dict[str, Any] | None = None) -> dict[str, Any]:
        """Queue a validated run. RunExists if the id is taken; NotFound if init_from names no run.

        ``resume_from`` (a checkpoint ref of another run) makes a fork: the new run's first
        attempt resumes the full training state from that checkpoint.
        """
        now = time.time() if now is None else now
        with self._write() as conn:
            self._insert_run(conn, config, now, resume_from=resume_from)
        return self.get_run(config.run_id)

    def _insert_run(self, conn: sa.Connection, config: RunConfig, now: float, *,
                    resume_from: dict[str, Any] | None = None) -> None:
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
            if field == "init_from.run" and parent.status in ("failed", "cancelled"):
                raise InvalidState(f"init_from.run: run {name!r} ended {parent.status}")
        conn.execute(
            runs.insert().values(
                run_id=config.run_id,
                kind=config.kind,
                config=run_config_dict(config),
                status="queued",
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
            conn.execute(checkpoints.insert().values(
                run_id=config.run_id, step=resume_from["step"], epoch=0, uri=resume_from["uri"],
                manifest_sha256=resume_from["manifest_sha256"], store_run_id=resume_from["store_run_id"],
                revision=resume_from["revision"], durable=True, created_at=now))
        self._event(conn, config.run_id, "submitted", f"{config.kind} run submitted", None, now)

    def cancel_run(self, run_id: str, *, now: float | None = None) -> dict[str, Any]:
        """Cancel a queued run at once; ask the holder of a running one to stop (seen on renew)."""
        now = time.time() if now is None else now
        with self._write() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id).with_for_update()).mappings().first()
            if row is None:
                raise NotFound(f"no run named {run_id!r}")
            if row["status"] in TERMINAL_STATUSES:
                raise InvalidState(f"run {run_id} already ended {row['status']}")
            if row["status"] == "queued":
                self._set_status(conn, dict(row), "cancelled", now)
                self._event(conn, run_id, "cancelled", "cancelled while queued", None, now)
            else:
                conn.execute(
                    runs.update().where(runs.c.run_id == run_id).values(cancel_requested=True, updated_at=now)
                )
                self._event(conn, run_id, "cancel_requested", f"cancel asked of {row['holder']}", None, now)
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> dict[str, Any]:
        """Everything about one run: summary, config, attempts, latest durable checkpoint."""
        with self._read() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).mappings().first()
            if row is None:
                raise NotFound(f"no run named {run_id!r}")
            tries = conn.execute(
                sa.select(attempts).where(attempts.c.run_id == run_id).order_by(attempts.c.epoch)
            ).mappings().all()
            detail = dict(row)
            detail["attempts"] = [
                {k: a[k] for k in a.keys() if k not in ("id", "run_id", "last_renewed_at", "gpus", "price_per_hour")}
                for a in tries
            ]
            detail["latest_checkpoint"] = self._latest_checkpoint(conn, run_id)
            detail["evaluations"] = self._evaluations(conn, run_id)
            for key in ("gpus", "labels", "lease_ttl_s"):
                detail.pop(key)
            return detail

    def list_runs(self, *, status: str | None = None, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        """A page of runs, newest first."""
        columns = [c for c in runs.c if c.name not in ("config", "gpus", "labels", "lease_ttl_s", "not_before",
                                                       "cancel_requested", "depends_on", "source_run")]
        query = sa.select(*columns)
        count = sa.select(sa.func.count()).select_from(runs)
        if status is not None:
            query = query.where(runs.c.status == status)
            count = count.where(runs.c.status == status)
        with self._read() as conn:
            total = conn.execute(count).scalar_one()
            items = conn.execute(
                query.order_by(runs.c.created_at.desc(), runs.c.run_id).limit(limit).offset(offset)
            ).mappings().all()
        next_offset = offset + limit if offset + limit < total else None
        return {"items": [dict(r) for r in items], "total": total, "next_offset": next_offset}

    def list_events(self, run_id: str, *, after: int = 0, limit: int = 100) -> dict[str, Any]:
        with self._read() as conn:
            self._require_run(conn, run_id)
            rows = conn.execute(
                sa.select(events)
                .where(events.c.run_id == run_id, events.c.id > after)
                .order_by(events.c.id)
                .limit(limit)
            ).mappings().all()
        items = [dict(r) for r in rows]
        return {"items": items, "next_after": items[-1]["id"] if len(items) == limit else None}

    def list_checkpoints(self, run_id: str) -> list[dict[str, Any]]:
        with self._read() as conn:
            self._require_run(conn, run_id)
            rows = conn.execute(
                sa.select(checkpoints)
                .where(checkpoints.c.run_id == run_id, checkpoints.c.durable.is_(True))
                .order_by(checkpoints.c.step, checkpoints.c.epoch)
            ).mappings().all()
        return [self._checkpoint_ref(r) for r in rows]

    def list_metrics(self, run_id: str, *, name: str | None = None, limit: int = 10_000) -> list[dict[str, Any]]:
        query = sa.select(metrics.c.step, metrics.c.name, metrics.c.value, metrics.c.epoch).where(
            metrics.c.run_id == run_id
        )
        if name is not None:
            query = query.where(metrics.c.name == name)
        with self._read() as conn:
            self._require_run(conn, run_id)
            rows = conn.execute(query.order_by(metrics.c.id.desc()).limit(limit)).mappings().all()
        return [dict(r) for r in reversed(rows)]

    def _require_run(self, conn: sa.Connection, run_id: str) -> None:
        if conn.execute(sa.select(runs.c.run_id).where(runs.c.run_id == run_id)).first() is None:
            raise NotFound(f"no run named {run_id!r}")

    def _latest_checkpoint(
        self, conn: sa.Connection, run_id: str, *, step: int | None = None, epoch: int | None = None
    ) -> dict[str, Any] | None:
        """The newest durable checkpoint of a run (or the one at ``step``/``epoch``)."""
        if step is None:
            newest = self._durable_checkpoints(conn, run_id, limit=1)
            return newest[0] if newest else None
        row = conn.execute(
            sa.select(checkpoints).where(checkpoints.c.run_id == run_id, checkpoints.c.durable.is_(True),
                                         checkpoints.c.step == step, checkpoints.c.epoch == epoch)
        ).mappings().first()
        return self._checkpoint_ref(row) if row else None

    def _durable_checkpoints(self, conn: sa.Connection, run_id: str, *, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` durable checkpoints of a run, newest first."""
        rows = conn.execute(_DURABLE_CHECKPOINTS, {"run_id": run_id, "limit": limit}).mappings().all()
        return [self._checkpoint_ref(r) for r in rows]

    @staticmethod
    def _checkpoint_ref(row: Any) -> dict[str, Any]:
        ref = {k: row[k] for k in ("run_id", "step", "epoch", "uri", "manifest_sha256", "created_at", "revision")}
        ref["store_run_id"] = row["store_run_id"] or row["run_id"]
        return ref

    # -- workers ---------------------------------------------------------------------------

    def register_worker(self, worker_id: str, *, provider: str, hostname: str | None, version: str | None,
                        resources: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        """Create or refresh a worker's record."""
        now = time.time() if now is None else now
        values = {
            "provider": provider,
            "hostname": hostname,
            "version": version,
            "gpus": resources.get("gpus", []),
            "labels": resources.get("labels", {}),
            "price_per_hour": resources.get("price_per_hour"),
            "last_heartbeat": now,
        }
        with self._write() as conn:
            if conn.execute(sa.select(workers.c.worker_id).where(workers.c.worker_id == worker_id)).first():
                conn.execute(workers.update().where(workers.c.worker_id == worker_id).values(**values))
            else:
                conn.execute(workers.insert().values(worker_id=worker_id, registered_at=now, **values))
                self._event(conn, None, "worker", f"worker {worker_id} registered", {"worker_id": worker_id}, now)
        return self.get_worker(worker_id)

    def heartbeat(self, worker_id: str, *, resources: dict[str, Any] | None = None,
                  now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        values: dict[str, Any] = {"last_heartbeat": now}
        if resources is not None:
            values.update(gpus=resources.get("gpus", []), labels=resources.get("labels", {}),
                          price_per_hour=resources.get("price_per_hour"))
        with self._write() as conn:
            if not conn.execute(workers.update().where(workers.c.worker_id == worker_id).values(**values)).rowcount:
                raise NotFound(f"no worker named {worker_id!r}: register first")
        return self.get_worker(worker_id)

    def get_worker(self, worker_id: str) -> dict[str, Any]:
        items = self.list_workers(worker_id=worker_id)
        if not items:
            raise NotFound(f"no worker named {worker_id!r}")
        return items[0]

    def list_workers(self, *, worker_id: str | None = None) -> list[dict[str, Any]]:
        current = (
            sa.select(runs.c.run_id).where(runs.c.holder == workers.c.worker_id, runs.c.status == "running")
            .limit(1).scalar_subquery()
        )
        query = sa.select(workers, current.label("current_run")).order_by(workers.c.worker_id)
        if worker_id is not None:
            query = query.where(workers.c.worker_id == worker_id)
        with self._read() as conn:
            rows = conn.execute(query).mappings().all()
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
            }
            for r in rows
        ]

    # -- tokens ----------------------------------------------------------------------------

    def create_token(self, name: str, scope: str, *, now: float | None = None) -> str:
        """A new random token; only its hash is kept. The plain token is returned once."""
        now = time.time() if now is None else now
        token = f"relay_{scope[0]}_{secrets.token_urlsafe(32)}"
        with self._write() as conn:
            conn.execute(tokens.insert().values(name=name, scope=scope, token_hash=hash_token(token), created_at=now))
        return token

    def token_scope(self, token: str) -> str | None:
        """The scope of a live token, or None."""
        return self.token_scope_by_hash(hash_token(token))

    def token_scope_by_hash(self, token_hash: str) -> str | None:
        """The scope of the live token whose sha256 is ``token_hash``, or None."""
        with self._read() as conn:
            return conn.execute(
                sa.select(tokens.c.scope).where(tokens.c.token_hash == token_hash, tokens.c.revoked_at.is_(None))
            ).scalar()

    # -- inspection ------------------------------------------------------------------------

    def status_counts(self) -> dict[str, int]:
        with self._read() as conn:
            rows = conn.execute(sa.select(runs.c.status, sa.func.count()).group_by(runs.c.status)).all()
        return {status: n for status, n in rows}

    def attempts_table(self) -> list[dict[str, Any]]:
        """Every attempt, for audits such as the lease-safety tests."""
        with self._read() as conn:
            rows = conn.execute(sa.select(attempts).order_by(attempts.c.run_id, attempts.c.epoch)).mappings().all()
        return [dict(r) for r in rows]
