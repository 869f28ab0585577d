"""The commander's store: the one place that reads and writes its database.

:class:`Store` is a thin transactional facade: each public method (``submit_run``, ``claim_run``,
``renew_lease``, ``release_lease``, ``commit_checkpoint``, …) opens one transaction and calls
the plain functions of one area module with its connection:

- :mod:`.leases`: grants, renewals, the fence, releases, expiries (and fenced writes);
- :mod:`.beat`: the commander's beat, and leases extended by the length of its outages;
- :mod:`.runs`: submitting, reading and cancelling runs, status changes;
- :mod:`.evals`: automatic evaluations, the checkpoints an eval scores, ``relay resume``;
- :mod:`.rollout`: the rollout pool's discovery: announced rollout managers, rollout workers;
- :mod:`.logs`: the trainer output the holders ship, per attempt, capped;
- :mod:`.metrics`: a run's metric series across hand-offs, superseded points, downsampling;
- :mod:`.schedulable`: queued runs that no live worker or host can serve, and why;
- :mod:`.checkpoints`, :mod:`.events`, :mod:`.workers`, :mod:`.tokens`, :mod:`.ledger`, :mod:`.hosts`.

The same code runs on SQLite (the default, ``./relay.db``) and PostgreSQL, and the same tests
run on both. Every method takes ``now=`` (seconds since the epoch) for tests; by default the time
is read inside the method's transaction, on PostgreSQL from the database's clock, by fenced calls
in the statement that locks their run (:mod:`.clock`).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import sqlalchemy as sa

from relaytrain.api.status import WorkerRole
from relaytrain.config import RunConfig
from relaytrain.errors import NotFound, StoreError

from . import beat, evals, events, hosts, leases, ledger, logs, rollout, runs, schedulable, tokens, workers
from . import checkpoints as ckpts
from . import engine as _engine
from . import metrics as series
from .beat import stale_after
from .clock import Clock
from .schema import attempts
from .tokens import hash_token

__all__ = ["Store", "hash_token", "stale_after"]


UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)
"""What SQLAlchemy raises when the database is down, restarting, locked for too long, or out of connections."""


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


class Store:
    """All of the commander's state, behind named transactional functions."""

    def __init__(self, url: str, *, pool_size: int = 40) -> None:
        self.url = _engine.normalise_url(url)
        self.engine = _engine.make_engine(self.url, pool_size=pool_size)
        self.dialect = self.engine.dialect.name
        # SQLite admits one writer: queue writers in-process rather than in its busy handler,
        # whose sleeps would dominate tail latency.
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else nullcontext()
        self.counters: collections.Counter[str] = collections.Counter()
        self.clock = Clock(self.dialect)

    def now(self) -> float:
        """The store's time now (:mod:`.clock`), for callers that compare their own deadlines with
        times the store recorded (the autoscaler)."""
        with self._read() as conn:
            return self._clock(conn, None)

    def _clock(self, conn: sa.Connection, now: float | None) -> float:
        """The transaction's ``now``: the one given (tests), else :class:`.clock.Clock`'s, read on ``conn``."""
        return self.clock.now(conn, now)

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
        """A write transaction (SQLite: ``BEGIN IMMEDIATE``, behind the in-process writer lock)."""
        with self._available(), self._write_lock, self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        """A read-only transaction (SQLite: a plain ``BEGIN``, no writer lock)."""
        with self._available(), self.engine.connect() as conn:
            conn.execution_options(**{_engine.READONLY: True})
            with conn.begin():
                yield conn

    @contextmanager
    def _available(self) -> Iterator[None]:
        """A database that cannot be reached, is restarting or dropped the connection is
        :class:`~relaytrain.errors.StoreError` (503: clients retry, or try another replica, and a
        worker holds its lease in jeopardy), not a bug's 500. The transaction was rolled back."""
        try:
            yield
        except UNAVAILABLE as exc:
            raise StoreError(f"the database is unavailable: {_first_line(exc)}") from exc
        except sa.exc.DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            raise StoreError(f"the database dropped the connection: {_first_line(exc)}") from exc

    # -- runs ------------------------------------------------------------------------------

    def submit_run(self, config: RunConfig, *, now: float | None = None,
                   resume_from: dict[str, Any] | None = None) -> dict[str, Any]:
        """Queue a validated run. RunExists if the id is taken; NotFound if init_from names no run.
        ``resume_from`` (a checkpoint ref of another run) makes a fork that resumes it."""
        with self._write() as conn:
            now = self._clock(conn, now)
            runs.insert(conn, config, now, resume_from=resume_from)
        return self.get_run(config.run_id)

    def cancel_run(self, run_id: str, *, now: float | None = None) -> dict[str, Any]:
        """Cancel a queued run at once; ask the holder of a running one to stop (seen on renew)."""
        with self._write() as conn:
            now = self._clock(conn, now)
            runs.cancel(conn, run_id, now)
        return self.get_run(run_id)

    def reopen_run(self, run_id: str, *, from_step: int | None = None, additional_steps: int = 0,
                   now: float | None = None) -> dict[str, Any]:
        """``relay resume`` (:func:`.evals.reopen`). Returns the run to watch."""
        with self._write() as conn:
            now = self._clock(conn, now)
            watch = evals.reopen(conn, run_id, from_step=from_step, additional_steps=additional_steps,
                                 now=now)
        return self.get_run(watch)

    def get_run(self, run_id: str, *, unschedulable_after_s: float | None = None,
                now: float | None = None) -> dict[str, Any]:
        """Everything about one run: summary, config, attempts, latest durable checkpoint, evaluations;
        with ``unschedulable_after_s``, why nobody can take it (:func:`.schedulable.annotate`)."""
        with self._read() as conn:
            detail = runs.detail(conn, run_id)
            detail["evaluations"] = evals.of_run(conn, run_id)
            self._annotate(conn, [detail], unschedulable_after_s, now)
        return detail

    def list_runs(self, *, status: str | None = None, limit: int = 100, offset: int = 0,
                  unschedulable_after_s: float | None = None, now: float | None = None) -> dict[str, Any]:
        """A page of runs, newest first; with ``unschedulable_after_s``, why nobody can take each
        queued run that waited longer (:func:`.schedulable.annotate`)."""
        with self._read() as conn:
            page = runs.page(conn, status=status, limit=limit, offset=offset)
            self._annotate(conn, page["items"], unschedulable_after_s, now)
        return page

    def _annotate(self, conn: sa.Connection, items: list[dict[str, Any]], after_s: float | None,
                  now: float | None) -> None:
        """Each run's ``unschedulable`` (:func:`.schedulable.annotate`); the clock is read only if asked."""
        schedulable.annotate(conn, items, after_s=after_s, now=None if after_s is None else self._clock(conn, now))

    def list_evaluations(self, run_id: str) -> list[dict[str, Any]]:
        """The eval runs of a run, with their scores."""
        with self._read() as conn:
            runs.require(conn, run_id)
            return evals.of_run(conn, run_id)

    def list_events(self, run_id: str, *, after: int = 0, limit: int = 100) -> dict[str, Any]:
        with self._read() as conn:
            runs.require(conn, run_id)
            return events.list_for_run(conn, run_id, after=after, limit=limit)

    def list_checkpoints(self, run_id: str) -> list[dict[str, Any]]:
        """A run's durable checkpoints, oldest first."""
        with self._read() as conn:
            runs.require(conn, run_id)
            return ckpts.durable(conn, run_id)

    def list_metrics(self, run_id: str, *, names: list[str] | None = None, include_superseded: bool = False,
                     max_points: int | None = None) -> list[dict[str, Any]]:
        """A run's metric series (all, or those ``names``) ordered by name and step; superseded
        points only when asked; at most ``max_points`` per series, downsampled (:func:`.metrics.series`)."""
        with self._read() as conn:
            runs.require(conn, run_id)
            return series.series(conn, run_id, names=names, include_superseded=include_superseded,
                                 max_points=max_points)

    def metric_names(self, run_id: str) -> list[str]:
        """The names of a run's metrics, sorted."""
        with self._read() as conn:
            runs.require(conn, run_id)
            return series.metric_names(conn, run_id)

    def running_gauges(self, *, now: float | None = None) -> list[dict[str, Any]]:
        """Per running run, for Prometheus: status, step, max_steps, epoch, the latest tokens/s
        and the ETTR so far (:func:`.metrics.running_gauges`)."""
        with self._read() as conn:
            now = self._clock(conn, now)
            return series.running_gauges(conn, now)

    def status_counts(self) -> dict[str, int]:
        with self._read() as conn:
            return runs.status_counts(conn)

    def attempts_table(self) -> list[dict[str, Any]]:
        """Every attempt, for audits such as the lease-safety tests."""
        with self._read() as conn:
            rows = conn.execute(sa.select(attempts).order_by(attempts.c.run_id, attempts.c.epoch)).mappings().all()
        return [dict(r) for r in rows]

    # -- leases (DESIGN §4; the SQL and its locking: leases.py) -------------------------------

    def claim_run(self, worker_id: str, *, gpus: int = 0, labels: dict[str, str] | None = None,
                  kinds: list[str] | None = None, price_per_hour: float | None = None,
                  now: float | None = None) -> dict[str, Any] | None:
        """Grant the best run this worker can serve, or None. Expired leases are reclaimed first."""
        with self._write() as conn:
            now = self._clock(conn, now)
            self._count_expired(leases.expire(conn, now))
            return leases.claim(conn, worker_id, gpus=gpus, labels=labels or {}, kinds=kinds,
                                price_per_hour=price_per_hour, now=now)

    def renew_lease(self, run_id: str, worker_id: str, epoch: int, *, now: float | None = None) -> dict[str, Any]:
        """Extend a live lease by its ttl. Returns ``expires_at``, ``ttl_s``, ``cancel_requested``."""
        with self._write() as conn:
            now = self.clock.for_fence(now)
            return leases.renew(conn, run_id, worker_id, epoch, now)

    def record_progress(self, run_id: str, worker_id: str, epoch: int, points: list[dict[str, Any]], *,
                        now: float | None = None) -> int:
        """Store progress points ``{step, metrics}`` under a live lease; returns the run's step."""
        with self._write() as conn:
            now = self.clock.for_fence(now)
            return leases.record_progress(conn, run_id, worker_id, epoch, points, now)

    def commit_checkpoint(self, run_id: str, worker_id: str, epoch: int, *, step: int, uri: str,
                          manifest_sha256: str, revision: str | None = None,
                          now: float | None = None) -> dict[str, Any]:
        """Record a checkpoint that is durable in the store (:func:`.leases.commit_checkpoint`)."""
        with self._write() as conn:
            now = self.clock.for_fence(now)
            return leases.commit_checkpoint(conn, run_id, worker_id, epoch, step=step, uri=uri,
                                            manifest_sha256=manifest_sha256, revision=revision, now=now)

    def record_resume(self, run_id: str, worker_id: str, epoch: int, *, step: int, note: str | None = None,
                      now: float | None = None) -> None:
        """The holder resumed at ``step`` (0: from scratch); ``note`` says why not from a newer one."""
        with self._write() as conn:
            now = self.clock.for_fence(now)
            leases.record_resume(conn, run_id, worker_id, epoch, step=step, note=note, now=now)

    def release_lease(self, run_id: str, worker_id: str, epoch: int, *, outcome: str,
                      failure_class: str | None = None, message: str | None = None, stderr_tail: str | None = None,
                      step: int | None = None, now: float | None = None) -> dict[str, Any]:
        """End a live lease with an outcome and apply the retry policy. Returns the run's new status."""
        with self._write() as conn:
            now = self.clock.for_fence(now)
            return leases.release(conn, run_id, worker_id, epoch, outcome=outcome, failure_class=failure_class,
                                  message=message, stderr_tail=stderr_tail, step=step, now=now)

    def expire_leases(self, *, now: float | None = None) -> int:
        """Reclaim every lease past its deadline (the sweeper). Returns how many were reclaimed."""
        with self._write() as conn:
            now = self._clock(conn, now)
            return self._count_expired(leases.expire(conn, now))

    def sweep(self, *, stale_after_s: float, now: float | None = None) -> int:
        """The sweeper's transaction: extend the leases an outage of the commander interrupted
        (:mod:`.beat`), expire every lease past its deadline, and beat, saying that the commander
        counts as down if no beat follows within ``stale_after_s``. Returns how many leases expired."""
        with self._write() as conn:  # the beat's row before any run's, as every recovery takes them
            now = self._clock(conn, now)
            beat.recover(conn, now)
            beat.beat(conn, now, stale_after_s)
            return self._count_expired(leases.expire(conn, now))

    def _count_expired(self, n: int) -> int:
        if n:
            self.counters["expiries"] += n
        return n

    # -- central logs (the SQL and its offsets: logs.py) --------------------------------------

    def append_logs(self, run_id: str, worker_id: str, epoch: int, chunks: list[dict[str, Any]], *,
                    now: float | None = None) -> dict[str, int]:
        """Store chunks of the holder's trainer output under its live lease (:func:`.logs.append`)."""
        with self._write() as conn:
            now = self.clock.for_fence(now)
            return logs.append(conn, run_id, worker_id, epoch, chunks, now)

    def list_logs(self, run_id: str, *, attempt: int | None = None, after: int = 0,
                  limit: int = 200) -> dict[str, Any]:
        """One attempt's chunks from offset ``after`` (default: the latest attempt; :func:`.logs.page`)."""
        with self._read() as conn:
            return logs.page(conn, run_id, attempt=attempt, after=after, limit=limit)

    # -- workers ---------------------------------------------------------------------------

    def register_worker(self, worker_id: str, *, provider: str, hostname: str | None, version: str | None,
                        resources: dict[str, Any], kinds: list[str] | None = None,
                        now: float | None = None) -> dict[str, Any]:
        """Create or refresh a worker's record; ``kinds``: those it serves (None: all)."""
        with self._write() as conn:
            now = self._clock(conn, now)
            workers.register(conn, worker_id, provider=provider, hostname=hostname, version=version,
                             resources=resources, kinds=kinds, now=now)
        return self.get_worker(worker_id, now=now)

    def heartbeat(self, worker_id: str, *, resources: dict[str, Any] | None = None,
                  health: dict[str, Any] | None = None, now: float | None = None) -> dict[str, Any]:
        """The worker is alive; ``health`` (``{condition, reason}``): what it says of its machine."""
        with self._write() as conn:
            now = self._clock(conn, now)
            workers.heartbeat(conn, worker_id, resources=resources, health=health, now=now)
        return self.get_worker(worker_id, now=now)

    def get_worker(self, worker_id: str, *, now: float | None = None) -> dict[str, Any]:
        items = self.list_workers(worker_id=worker_id, now=now)
        if not items:
            raise NotFound(f"no worker named {worker_id!r}")
        return items[0]

    def list_workers(self, *, worker_id: str | None = None, now: float | None = None) -> list[dict[str, Any]]:
        with self._read() as conn:
            now = self._clock(conn, now)
            return workers.listing(conn, now, worker_id=worker_id)

    def worker_activity(self, worker_ids: list[str]) -> dict[str, str]:
        """For each id: ``busy``, ``idle``, ``rollout`` or ``absent`` (:func:`.hosts.worker_activity`)."""
        with self._read() as conn:
            return hosts.worker_activity(conn, worker_ids)

    # -- the rollout pool (DESIGN §11; the SQL: rollout.py) -----------------------------------

    def announce_rollout(self, run_id: str, worker_id: str, epoch: int, *, url: str, secret: str,
                         version: int | None = None, pool: list[dict[str, Any]] | None = None,
                         now: float | None = None) -> dict[str, Any]:
        """Record the run's rollout manager under a live lease (:func:`.rollout.announce`)."""
        with self._write() as conn:
            now = self.clock.for_fence(now)
            return rollout.announce(conn, run_id, worker_id, epoch, url=url, secret=secret, version=version,
                                    pool=pool or [], now=now)

    def rollout_endpoint(self, run_id: str, *, now: float | None = None) -> dict[str, Any]:
        """The run's current rollout manager, or NotFound saying why there is none."""
        with self._read() as conn:
            now = self._clock(conn, now)
            return rollout.endpoint(conn, run_id, now)

    def rollout_runs(self, *, now: float | None = None) -> list[dict[str, Any]]:
        """Running runs with a current rollout manager, fewest rollout workers first."""
        with self._read() as conn:
            now = self._clock(conn, now)
            return rollout.wanting(conn, now)

    def rollout_autoscale_demand(self, *, now: float | None = None) -> list[dict[str, Any]]:
        """Running runs that want rollout workers from the SSH autoscaler (:func:`.rollout.autoscale_demand`)."""
        with self._read() as conn:
            now = self._clock(conn, now)
            return rollout.autoscale_demand(conn, now)

    def register_rollout_worker(self, worker_id: str, *, labels: dict[str, str] | None = None,
                                run_id: str | None = None, now: float | None = None) -> dict[str, Any]:
        """Create or refresh a rollout worker's record (its heartbeat too)."""
        with self._write() as conn:
            now = self._clock(conn, now)
            rollout.register_worker(conn, worker_id, labels=labels or {}, run_id=run_id, now=now)
            return rollout.list_workers(conn, worker_id=worker_id)[0]

    def list_rollout_workers(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            return rollout.list_workers(conn)

    # -- tokens ----------------------------------------------------------------------------

    def issue_token(self, name: str, scope: str, *, expires_in_s: float | None = None,
                    now: float | None = None) -> dict[str, Any]:
        """A new random token: its record and, under ``token``, the plain token (returned once;
        only its hash is kept). ``expires_in_s`` None: it never expires."""
        with self._write() as conn:
            record, token = tokens.create(conn, name, scope, self._clock(conn, now), expires_in_s)
        return {**record, "token": token}

    def create_token(self, name: str, scope: str, *, expires_in_s: float | None = None,
                     now: float | None = None) -> str:
        """:meth:`issue_token`'s plain token."""
        return self.issue_token(name, scope, expires_in_s=expires_in_s, now=now)["token"]

    def list_tokens(self) -> list[dict[str, Any]]:
        """Every token's record (never the token or its hash), oldest first."""
        with self._read() as conn:
            return tokens.list_all(conn)

    def revoke_token(self, token_id: int, *, now: float | None = None) -> dict[str, Any]:
        """Revoke a token (again: no change). NotFound if there is none with this id."""
        with self._write() as conn:
            return tokens.revoke(conn, token_id, self._clock(conn, now))

    def token_scope(self, token: str, *, now: float | None = None) -> str | None:
        """The scope of a live token, or None."""
        with self._read() as conn:
            now = self._clock(conn, now)
        record = self.token_by_hash(hash_token(token), now=now)
        return record["scope"] if record is not None and tokens.is_live(record, now) else None

    def token_by_hash(self, token_hash: str, *, now: float | None = None) -> dict[str, Any] | None:
        """The record of the token whose sha256 is ``token_hash`` (revoked or expired too), or None.
        A live token's use is recorded, at most once a minute (:func:`.tokens.record_use`)."""
        with self._read() as conn:
            now = self._clock(conn, now)
            record = tokens.by_hash(conn, token_hash)
        if record is not None and tokens.is_live(record, now) and tokens.needs_use_recorded(record, now):
            with self._write() as conn:
                tokens.record_use(conn, record["id"], now)
        return record

    # -- ledger ----------------------------------------------------------------------------

    def run_ledger(self, run_id: str, *, now: float | None = None) -> dict[str, Any]:
        """The ledger of one run: every attempt, the run's totals, and totals per provider."""
        with self._read() as conn:
            now = self._clock(conn, now)
            return ledger.run_ledger(conn, run_id, now)

    def provider_ledger(self, *, now: float | None = None) -> dict[str, Any]:
        """Totals per provider over every run."""
        with self._read() as conn:
            now = self._clock(conn, now)
            return ledger.provider_ledger(conn, now)

    # -- hosts (DESIGN §10) ----------------------------------------------------------------

    def put_host(self, name: str, spec: dict[str, Any], *, now: float | None = None) -> dict[str, Any]:
        """Create a host or change its connection fields (its poll and its workers are kept)."""
        with self._write() as conn:
            now = self._clock(conn, now)
            hosts.put_host(conn, name, spec, now)
        return self.get_host(name)

    def get_host(self, name: str) -> dict[str, Any]:
        with self._read() as conn:
            return hosts.get_host(conn, name)

    def list_hosts(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            return hosts.list_hosts(conn)

    def remove_host(self, name: str, *, force: bool = False, now: float | None = None) -> None:
        """Forget a host. InvalidState while workers started there are alive, unless ``force``."""
        with self._write() as conn:
            now = self._clock(conn, now)
            hosts.remove_host(conn, name, force=force, now=now)

    def set_host_enabled(self, name: str, enabled: bool, *, now: float | None = None) -> dict[str, Any]:
        """A disabled host is still polled, but the autoscaler starts nothing there."""
        with self._write() as conn:
            now = self._clock(conn, now)
            hosts.set_host_enabled(conn, name, enabled, now)
        return self.get_host(name)

    def record_poll(self, name: str, *, gpus: list[dict[str, Any]] | None, error: str | None,
                    checked_pids: set[int] | None = None, alive_pids: set[int] | None = None,
                    now: float | None = None) -> list[dict[str, Any]]:
        """Store one poll (:func:`.hosts.record_poll`); returns the workers found gone."""
        with self._write() as conn:
            now = self._clock(conn, now)
            return hosts.record_poll(conn, name, gpus=gpus, error=error, checked=checked_pids or set(),
                                     alive=alive_pids or set(), now=now)

    def reserve_gpus(self, name: str, *, worker_id: str, gpus: list[int], run_id: str | None = None,
                     role: WorkerRole = WorkerRole.WORKER, now: float | None = None) -> bool:
        """Atomically hold ``gpus`` of an enabled, reachable host for a worker (of ``role``) about to
        start. False (and nothing changes) when any of them is busy or already held."""
        with self._write() as conn:
            now = self._clock(conn, now)
            return hosts.reserve_gpus(conn, name, worker_id=worker_id, gpus=gpus, run_id=run_id, role=role,
                                      now=now)

    def assign_worker(self, name: str, worker_id: str, handle: dict[str, Any], *, now: float | None = None) -> None:
        """Record the started worker's pid and files on its reservation."""
        with self._write() as conn:
            now = self._clock(conn, now)
            hosts.assign_worker(conn, name, worker_id, handle, now)

    def release_gpus(self, name: str, worker_id: str, *, error: str | None = None, now: float | None = None) -> None:
        """Drop a worker's reservation (it failed to start, or was stopped); ``error`` goes on the host."""
        with self._write() as conn:
            now = self._clock(conn, now)
            hosts.release_gpus(conn, name, worker_id, error=error, now=now)

    def ended_runs(self, run_ids: list[str]) -> set[str]:
        """Those of ``run_ids`` that ended or no longer exist."""
        with self._read() as conn:
            return hosts.ended_runs(conn, run_ids)

    def gpu_demand(self, *, now: float | None = None) -> list[dict[str, Any]]:
        """Queued runs that could start now: ``run_id``, ``gpus``, ``labels``, best first."""
        with self._read() as conn:
            now = self._clock(conn, now)
            return hosts.gpu_demand(conn, now)
