"""Lease arbitration (DESIGN §4) and the retry policy (§7): every SQL statement that grants,
renews, fences or ends a lease lives here.

Each public method is one transaction. On SQLite writers take the database lock at
``BEGIN IMMEDIATE``; on PostgreSQL the run row is locked (``FOR UPDATE``, ``SKIP LOCKED`` for
the queue), so two claims can never both win and a stale epoch can never write.

The statements of the claim, the fence and the renewal are built once, here, with bind
parameters: building and cache-keying a statement costs more CPU than SQLite takes to run it,
and a renewal runs thousands of times a second.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import sqlalchemy as sa

from relaytrain.config import RetryPolicy
from relaytrain.errors import LeaseLost, NotFound

from .schema import attempts, checkpoints, metrics, runs

CLAIM_BATCH = 64  # candidates read per page, without locks
FALLBACKS = 4  # older durable checkpoints a grant offers in case the newest turns out corrupt

# What the fence needs of a run; calls that need the rest (config, retries) ask for the whole row.
_LEASE_COLUMNS = (runs.c.run_id, runs.c.epoch, runs.c.status, runs.c.holder, runs.c.lease_expires_at,
                  runs.c.lease_ttl_s, runs.c.cancel_requested)
_FENCE_ROW = sa.select(runs).where(runs.c.run_id == sa.bindparam("run_id")).with_for_update()
_FENCE_LEASE = sa.select(*_LEASE_COLUMNS).where(runs.c.run_id == sa.bindparam("run_id")).with_for_update()
_EXTEND_LEASE = (
    runs.update()
    .where(runs.c.run_id == sa.bindparam("b_run_id"))
    .values(lease_expires_at=sa.bindparam("b_expires_at"), updated_at=sa.bindparam("b_now"))
)
_MARK_RENEWED = (
    attempts.update()
    .where(attempts.c.run_id == sa.bindparam("b_run_id"), attempts.c.epoch == sa.bindparam("b_epoch"))
    .values(last_renewed_at=sa.bindparam("b_now"))
)


class _ClaimStatements(NamedTuple):
    first_page: sa.Select  # candidates in queue order, unlocked: run_id, labels and the order's keys
    next_page: sa.Select  # the same past ``after_*`` (keyset pagination)
    lock: sa.Select  # the first still claimable of ``candidates``, locked; SKIP LOCKED: only that row


def _claim_statements(with_kinds: bool) -> _ClaimStatements:
    """Parameters: ``now``, ``gpus``, with ``kinds`` a list of kinds; ``after_priority``,
    ``after_created``, ``after_run_id`` for the next page; ``candidates`` for the lock."""
    parent = runs.alias("parent")
    ready_parent = (
        sa.select(parent.c.run_id).where(parent.c.run_id == runs.c.depends_on, parent.c.status == "succeeded")
    ).exists()
    claimable = [
        runs.c.status == "queued",
        runs.c.not_before <= sa.bindparam("now"),
        runs.c.gpus <= sa.bindparam("gpus"),
        sa.or_(runs.c.depends_on.is_(None), ready_parent),
    ]
    if with_kinds:
        claimable.append(runs.c.kind.in_(sa.bindparam("kinds", expanding=True)))
    queue_order = (runs.c.priority.desc(), runs.c.created_at, runs.c.run_id)
    first_page = (
        sa.select(runs.c.run_id, runs.c.labels, runs.c.priority, runs.c.created_at)
        .where(*claimable)
        .order_by(*queue_order)
        .limit(CLAIM_BATCH)
    )
    prio, created = sa.bindparam("after_priority"), sa.bindparam("after_created")
    after = sa.or_(
        runs.c.priority < prio,
        sa.and_(runs.c.priority == prio, runs.c.created_at > created),
        sa.and_(runs.c.priority == prio, runs.c.created_at == created, runs.c.run_id > sa.bindparam("after_run_id")),
    )
    lock = (
        sa.select(runs)
        .where(runs.c.run_id.in_(sa.bindparam("candidates", expanding=True)), *claimable)
        .order_by(*queue_order)
        .limit(1)
        .with_for_update(skip_locked=True, of=runs)
    )
    return _ClaimStatements(first_page, first_page.where(after), lock)


_CLAIM = {with_kinds: _claim_statements(with_kinds) for with_kinds in (False, True)}
_EXPIRED = (
    sa.select(runs)
    .where(runs.c.status == "running", runs.c.lease_expires_at <= sa.bindparam("now"))
    .with_for_update(skip_locked=True)
)
_GRANT = (
    runs.update()
    .where(runs.c.run_id == sa.bindparam("b_run_id"), runs.c.epoch == sa.bindparam("b_epoch"),
           runs.c.status == "queued")
    .values(status="running", holder=sa.bindparam("b_holder"), epoch=sa.bindparam("b_new_epoch"),
            lease_expires_at=sa.bindparam("b_expires_at"), step=sa.bindparam("b_step"),
            updated_at=sa.bindparam("b_now"))
)
_OPEN_ATTEMPT = attempts.insert()


def labels_match(wanted: dict[str, str], offered: dict[str, str]) -> bool:
    """A worker serves a run when it carries every label the run asks for, with the same value."""
    return all(offered.get(key) == value for key, value in wanted.items())


class LeaseMixin:
    """Methods of :class:`Store` that touch leases. Needs ``_write``, ``_event``, ``_latest_checkpoint``."""

    # -- grant -----------------------------------------------------------------------------

    def claim_run(
        self,
        worker_id: str,
        *,
        gpus: int = 0,
        labels: dict[str, str] | None = None,
        kinds: list[str] | None = None,
        price_per_hour: float | None = None,
        now: float | None = None,
    ) -> dict[str, Any] | None:
        """Grant the best run this worker can serve, or None. Expired leases are reclaimed first."""
        now = time.time() if now is None else now
        labels = labels or {}
        with self._write() as conn:
            self._expire(conn, now)
            chosen = self._pick(conn, gpus=gpus, labels=labels, kinds=kinds, now=now)
            if chosen is None:
                return None
            epoch = chosen["epoch"] + 1
            expires_at = now + chosen["lease_ttl_s"]
            durable = self._durable_checkpoints(conn, chosen["run_id"], limit=FALLBACKS + 1)
            latest = durable[0] if durable else None
            resume_step = latest["step"] if latest else 0
            updated = conn.execute(_GRANT, {
                "b_run_id": chosen["run_id"], "b_epoch": chosen["epoch"], "b_holder": worker_id, "b_new_epoch": epoch,
                "b_expires_at": expires_at, "b_step": resume_step, "b_now": now,
            }).rowcount
            assert updated == 1, "the queue row changed under its lock"
            conn.execute(_OPEN_ATTEMPT, {
                "run_id": chosen["run_id"], "epoch": epoch, "worker_id": worker_id, "granted_at": now,
                "last_renewed_at": now, "step_start": resume_step, "gpus": gpus, "price_per_hour": price_per_hour,
            })
            self._event(
                conn,
                chosen["run_id"],
                "granted",
                f"lease epoch {epoch} granted to {worker_id}, resuming at step {resume_step}",
                {"epoch": epoch, "worker_id": worker_id, "step": resume_step},
                now,
            )
            init = None
            if chosen["depends_on"]:
                init = self._latest_checkpoint(conn, chosen["depends_on"])
            return {
                "eval_checkpoints": self._eval_checkpoints(conn, chosen) if chosen["kind"] == "eval" else [],
                "fallback_checkpoints": durable[1:],
                "run_id": chosen["run_id"],
                "kind": chosen["kind"],
                "config": chosen["config"],
                "epoch": epoch,
                "ttl_s": chosen["lease_ttl_s"],
                "expires_at": expires_at,
                "max_steps": chosen["max_steps"],
                "checkpoint": latest,
                "init_checkpoint": init,
            }

    def _pick(
        self, conn: sa.Connection, *, gpus: int, labels: dict[str, str], kinds: list[str] | None, now: float
    ) -> dict[str, Any] | None:
        """The highest-priority, oldest queued run this worker can serve, locked for update.

        Candidates are read in queue order a page at a time, without locks. Among those whose
        labels the worker carries, the first still claimable is then locked, every condition
        checked again (PostgreSQL: ``ORDER BY … LIMIT 1 FOR UPDATE SKIP LOCKED``, which locks only
        the row it returns). A claim so locks only the run it takes, and a concurrent claim skips
        that one run, not a whole page of them. On SQLite the transaction already holds the
        database lock, so the first candidate is always free.
        """
        statements = _CLAIM[bool(kinds)]
        params: dict[str, Any] = {"now": now, "gpus": gpus}
        if kinds:
            params["kinds"] = list(kinds)
        page = statements.first_page
        while True:
            rows = conn.execute(page, params).all()
            matching = [row.run_id for row in rows if labels_match(row.labels or {}, labels)]
            if matching:
                # None: concurrent claims hold them all, or took them since the page was read
                taken = conn.execute(statements.lock, {**params, "candidates": matching}).mappings().first()
                if taken is not None:
                    return dict(taken)
            if len(rows) < CLAIM_BATCH:
                return None
            last = rows[-1]
            page = statements.next_page
            params.update(after_priority=last.priority, after_created=last.created_at, after_run_id=last.run_id)

    # -- fence -----------------------------------------------------------------------------

    def _fenced_run(
        self, conn: sa.Connection, run_id: str, worker_id: str, epoch: int, now: float, *, whole: bool = True
    ) -> dict:
        """The run row, locked, if ``(worker_id, epoch)`` holds its live lease; else LeaseLost.
        Without ``whole``, only the lease's columns (``_LEASE_COLUMNS``)."""
        fence = _FENCE_ROW if whole else _FENCE_LEASE
        row = conn.execute(fence, {"run_id": run_id}).mappings().first()
        if row is None:
            raise NotFound(f"no run named {run_id!r}")
        if row["epoch"] != epoch:
            raise LeaseLost(f"run {run_id}: epoch {epoch} is stale (current epoch is {row['epoch']})")
        if row["status"] != "running" or row["holder"] != worker_id:
            raise LeaseLost(f"run {run_id}: {worker_id} does not hold a live lease at epoch {epoch}")
        if row["lease_expires_at"] is None or row["lease_expires_at"] <= now:
            raise LeaseLost(f"run {run_id}: the lease at epoch {epoch} has expired")
        return dict(row)

    def renew_lease(self, run_id: str, worker_id: str, epoch: int, *, now: float | None = None) -> dict[str, Any]:
        """Extend a live lease by its ttl. Returns ``expires_at``, ``ttl_s``, ``cancel_requested``."""
        now = time.time() if now is None else now
        with self._write() as conn:
            row = self._fenced_run(conn, run_id, worker_id, epoch, now, whole=False)
            expires_at = now + row["lease_ttl_s"]
            conn.execute(_EXTEND_LEASE, {"b_run_id": run_id, "b_expires_at": expires_at, "b_now": now})
            conn.execute(_MARK_RENEWED, {"b_run_id": run_id, "b_epoch": epoch, "b_now": now})
            return {"expires_at": expires_at, "ttl_s": row["lease_ttl_s"], "cancel_requested": row["cancel_requested"]}

    def record_progress(
        self, run_id: str, worker_id: str, epoch: int, points: list[dict[str, Any]], *, now: float | None = None
    ) -> int:
        """Store progress points ``{step, metrics}`` under a live lease; returns the run's step."""
        now = time.time() if now is None else now
        with self._write() as conn:
            self._fenced_run(conn, run_id, worker_id, epoch, now, whole=False)
            rows = [
                {"run_id": run_id, "epoch": epoch, "step": p["step"], "name": name, "value": value, "ts": now}
                for p in points
                for name, value in p.get("metrics", {}).items()
            ]
            if rows:
                conn.execute(metrics.insert(), rows)
            step = points[-1]["step"]
            conn.execute(runs.update().where(runs.c.run_id == run_id).values(step=step, updated_at=now))
            conn.execute(
                attempts.update()
                .where(attempts.c.run_id == run_id, attempts.c.epoch == epoch)
                .values(step_end=step)
            )
            return step

    def commit_checkpoint(
        self,
        run_id: str,
        worker_id: str,
        epoch: int,
        *,
        step: int,
        uri: str,
        manifest_sha256: str,
        revision: str | None = None,
        now: float | None = None,
    ) -> dict[str, Any]:
        """Record a checkpoint that is durable in the store. Idempotent for the same epoch and step.
        ``revision``: the store's commit holding it, for stores with history (the Hub)."""
        now = time.time() if now is None else now
        with self._write() as conn:
            run = self._fenced_run(conn, run_id, worker_id, epoch, now)
            key = (checkpoints.c.run_id == run_id, checkpoints.c.step == step, checkpoints.c.epoch == epoch)
            if conn.execute(sa.select(checkpoints.c.id).where(*key)).first():
                conn.execute(checkpoints.update().where(*key).values(uri=uri, manifest_sha256=manifest_sha256,
                                                                      revision=revision))
            else:
                conn.execute(
                    checkpoints.insert().values(
                        run_id=run_id,
                        step=step,
                        epoch=epoch,
                        uri=uri,
                        manifest_sha256=manifest_sha256,
                        revision=revision,
                        durable=True,
                        created_at=now,
                    )
                )
            self._event(conn, run_id, "checkpoint", f"checkpoint at step {step} is durable: {uri}",
                        {"step": step, "epoch": epoch, "uri": uri}, now)
            # A durable checkpoint proves training reached its step, whatever progress has said so far.
            reached = sa.case((attempts.c.step_end < step, step), else_=attempts.c.step_end)
            conn.execute(
                attempts.update()
                .where(attempts.c.run_id == run_id, attempts.c.epoch == epoch)
                .values(step_end=sa.func.coalesce(reached, step))
            )
            self._auto_eval(conn, run, step, now)
            return self._latest_checkpoint(conn, run_id, step=step, epoch=epoch)

    def record_resume(
        self, run_id: str, worker_id: str, epoch: int, *, step: int, note: str | None = None,
        now: float | None = None,
    ) -> None:
        """The holder resumed at ``step`` (0: from scratch); ``note`` says why not from a newer one."""
        now = time.time() if now is None else now
        with self._write() as conn:
            self._fenced_run(conn, run_id, worker_id, epoch, now, whole=False)
            conn.execute(
                attempts.update()
                .where(attempts.c.run_id == run_id, attempts.c.epoch == epoch)
                .values(step_start=step, step_end=step, resume_note=note)
            )
            conn.execute(runs.update().where(runs.c.run_id == run_id).values(step=step, updated_at=now))
            message = f"epoch {epoch} resumed at step {step}" + (f": {note}" if note else "")
            self._event(conn, run_id, "resumed", message, {"epoch": epoch, "step": step}, now)

    # -- end -------------------------------------------------------------------------------

    def release_lease(
        self,
        run_id: str,
        worker_id: str,
        epoch: int,
        *,
        outcome: str,
        failure_class: str | None = None,
        message: str | None = None,
        stderr_tail: str | None = None,
        step: int | None = None,
        now: float | None = None,
    ) -> dict[str, Any]:
        """End a live lease with an outcome and apply the retry policy. Returns the run's new status."""
        now = time.time() if now is None else now
        with self._write() as conn:
            row = self._fenced_run(conn, run_id, worker_id, epoch, now)
            self._close_attempt(conn, row, outcome, failure_class, message, stderr_tail, step, now)
            policy = RetryPolicy.model_validate(row["config"].get("retry", {}))
            retries = row["retries_used"]
            not_before = now
            error = row["last_error"]
            if outcome == "succeeded":
                status = "succeeded"
            elif outcome == "cancelled" or row["cancel_requested"]:
                status = "cancelled"
            elif outcome == "preempted":
                status = "queued"
            elif failure_class == "permanent":
                status, error = "failed", f"permanent failure: {message or 'no message'}"
            else:
                retries += 1
                error = f"transient failure ({retries}/{policy.max_retries} retries): {message or 'no message'}"
                if retries > policy.max_retries:
                    status = "failed"
                    error = f"retries exhausted ({policy.max_retries}); last error: {message or 'no message'}"
                else:
                    status = "queued"
                    not_before = now + policy.backoff_s(retries)
            self._set_status(conn, row, status, now, retries_used=retries, not_before=not_before, last_error=error)
            detail = f"{outcome}" + (f" ({failure_class}): {message}" if failure_class else "")
            self._event(conn, run_id, "released", f"epoch {epoch} ended {detail}; run is {status}",
                        {"epoch": epoch, "outcome": outcome, "failure_class": failure_class, "status": status}, now)
            return {"status": status, "retries_used": retries, "not_before": not_before}

    def expire_leases(self, *, now: float | None = None) -> int:
        """Reclaim every lease past its deadline (the sweeper). Returns how many were reclaimed."""
        now = time.time() if now is None else now
        with self._write() as conn:
            return self._expire(conn, now)

    def _expire(self, conn: sa.Connection, now: float) -> int:
        rows = conn.execute(_EXPIRED, {"now": now}).mappings().all()
        for row in rows:
            row = dict(row)
            message = f"lease expired: no renewal from {row['holder']}"
            self._close_attempt(conn, row, "lost", None, message, None, None, now)
            status = "cancelled" if row["cancel_requested"] else "queued"
            self._set_status(conn, row, status, now, not_before=now)
            self._event(conn, row["run_id"], "expired", f"epoch {row['epoch']} {message}; run is {status}",
                        {"epoch": row["epoch"], "worker_id": row["holder"]}, now)
        if rows:
            self.counters["expiries"] += len(rows)
        return len(rows)

    def _close_attempt(
        self,
        conn: sa.Connection,
        run: dict,
        outcome: str,
        failure_class: str | None,
        message: str | None,
        stderr_tail: str | None,
        step: int | None,
        now: float,
    ) -> None:
        attempt = conn.execute(
            sa.select(attempts.c.step_start, attempts.c.step_end).where(
                attempts.c.run_id == run["run_id"], attempts.c.epoch == run["epoch"]
            )
        ).first()
        step_end = step
        if step_end is None:
            step_end = attempt.step_end if attempt.step_end is not None else attempt.step_start
        latest = self._latest_checkpoint(conn, run["run_id"])
        durable = max(latest["step"] if latest else 0, attempt.step_start)
        conn.execute(
            attempts.update()
            .where(attempts.c.run_id == run["run_id"], attempts.c.epoch == run["epoch"])
            .values(
                ended_at=now,
                outcome=outcome,
                failure_class=failure_class,
                message=message,
                stderr_tail=stderr_tail,
                step_end=step_end,
                steps_lost=max(0, step_end - durable),
            )
        )

    def _set_status(self, conn: sa.Connection, run: dict, status: str, now: float, **values: Any) -> None:
        """Move a run off its lease to ``status``; terminal failures fail the runs that wait on it."""
        terminal = status in ("succeeded", "failed", "cancelled")
        conn.execute(
            runs.update()
            .where(runs.c.run_id == run["run_id"])
            .values(
                status=status,
                holder=None,
                lease_expires_at=None,
                updated_at=now,
                finished_at=now if terminal else None,
                **values,
            )
        )
        if status in ("failed", "cancelled"):
            self._fail_dependents(conn, run["run_id"], status, now)

    def _fail_dependents(self, conn: sa.Connection, run_id: str, status: str, now: float) -> None:
        waiting = conn.execute(
            sa.select(runs.c.run_id).where(runs.c.depends_on == run_id, runs.c.status == "queued")
        ).scalars().all()
        for dependent in waiting:
            error = f"init_from run {run_id} ended {status}"
            conn.execute(
                runs.update()
                .where(runs.c.run_id == dependent)
                .values(status="failed", last_error=error, updated_at=now, finished_at=now)
            )
            self._event(conn, dependent, "failed", error, None, now)
            self._fail_dependents(conn, dependent, "failed", now)
