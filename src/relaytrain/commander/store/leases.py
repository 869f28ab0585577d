"""Lease arbitration (DESIGN §4) and the retry policy (§7): every SQL statement that grants,
renews, fences or ends a lease lives here.

Each public method is one transaction. On SQLite writers take the database lock at
``BEGIN IMMEDIATE``; on PostgreSQL the run row is locked (``FOR UPDATE``, ``SKIP LOCKED`` for
the queue), so two claims can never both win and a stale epoch can never write.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from relaytrain.config import RetryPolicy
from relaytrain.errors import LeaseLost, NotFound

from .schema import attempts, checkpoints, metrics, runs

CLAIM_BATCH = 64
FALLBACKS = 4  # older durable checkpoints a grant offers in case the newest turns out corrupt


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
            latest = self._latest_checkpoint(conn, chosen["run_id"])
            resume_step = latest["step"] if latest else 0
            updated = conn.execute(
                runs.update()
                .where(runs.c.run_id == chosen["run_id"], runs.c.epoch == chosen["epoch"], runs.c.status == "queued")
                .values(
                    status="running",
                    holder=worker_id,
                    epoch=epoch,
                    lease_expires_at=expires_at,
                    step=resume_step,
                    updated_at=now,
                )
            ).rowcount
            assert updated == 1, "the queue row changed under its lock"
            conn.execute(
                attempts.insert().values(
                    run_id=chosen["run_id"],
                    epoch=epoch,
                    worker_id=worker_id,
                    granted_at=now,
                    last_renewed_at=now,
                    step_start=resume_step,
                    gpus=gpus,
                    price_per_hour=price_per_hour,
                )
            )
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
                "fallback_checkpoints": self._durable_checkpoints(conn, chosen["run_id"], limit=FALLBACKS + 1)[1:],
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
        """The highest-priority, oldest queued run this worker can serve, locked for update."""
        parent = runs.alias("parent")
        ready_parent = (
            sa.select(parent.c.run_id).where(parent.c.run_id == runs.c.depends_on, parent.c.status == "succeeded")
        ).exists()
        query = (
            sa.select(runs)
            .where(
                runs.c.status == "queued",
                runs.c.not_before <= now,
                runs.c.gpus <= gpus,
                sa.or_(runs.c.depends_on.is_(None), ready_parent),
            )
            .order_by(runs.c.priority.desc(), runs.c.created_at, runs.c.run_id)
            .limit(CLAIM_BATCH)
            .with_for_update(skip_locked=True, of=runs)
        )
        if kinds:
            query = query.where(runs.c.kind.in_(kinds))
        after = None
        while True:
            page = query
            if after is not None:  # keyset pagination past runs whose labels did not match
                prio, created, run_id = after
                page = page.where(
                    sa.or_(
                        runs.c.priority < prio,
                        sa.and_(runs.c.priority == prio, runs.c.created_at > created),
                        sa.and_(runs.c.priority == prio, runs.c.created_at == created, runs.c.run_id > run_id),
                    )
                )
            rows = conn.execute(page).mappings().all()
            for row in rows:
                if labels_match(row["labels"] or {}, labels):
                    return dict(row)
            if len(rows) < CLAIM_BATCH:
                return None
            last = rows[-1]
            after = (last["priority"], last["created_at"], last["run_id"])

    # -- fence -----------------------------------------------------------------------------

    def _fenced_run(self, conn: sa.Connection, run_id: str, worker_id: str, epoch: int, now: float) -> dict:
        """The run row, locked, if ``(worker_id, epoch)`` holds its live lease; else LeaseLost."""
        row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id).with_for_update()).mappings().first()
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
            row = self._fenced_run(conn, run_id, worker_id, epoch, now)
            expires_at = now + row["lease_ttl_s"]
            conn.execute(
                runs.update().where(runs.c.run_id == run_id).values(lease_expires_at=expires_at, updated_at=now)
            )
            conn.execute(
                attempts.update()
                .where(attempts.c.run_id == run_id, attempts.c.epoch == epoch)
                .values(last_renewed_at=now)
            )
            return {"expires_at": expires_at, "ttl_s": row["lease_ttl_s"], "cancel_requested": row["cancel_requested"]}

    def record_progress(
        self, run_id: str, worker_id: str, epoch: int, points: list[dict[str, Any]], *, now: float | None = None
    ) -> int:
        """Store progress points ``{step, metrics}`` under a live lease; returns the run's step."""
        now = time.time() if now is None else now
        with self._write() as conn:
            self._fenced_run(conn, run_id, worker_id, epoch, now)
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
            self._fenced_run(conn, run_id, worker_id, epoch, now)
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
        rows = conn.execute(
            sa.select(runs)
            .where(runs.c.status == "running", runs.c.lease_expires_at <= now)
            .with_for_update(skip_locked=True)
        ).mappings().all()
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
