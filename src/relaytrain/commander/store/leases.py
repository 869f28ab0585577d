"""Lease arbitration (DESIGN §4): every SQL statement that grants, renews, fences or ends a lease
lives here. The retry policy (§7) applied when a lease ends is :func:`relaytrain.commander.policy.next_status`.

Each public function takes an open connection and runs inside the one transaction that
:class:`relaytrain.commander.store.Store` opens for it. On SQLite writers take the database lock at
``BEGIN IMMEDIATE``; on PostgreSQL the run row is locked (``FOR UPDATE``, ``SKIP LOCKED`` for
the queue), so two claims can never both win and a stale epoch can never write.

The statements of the claim, the fence and the renewal are built once, here, with bind
parameters: building and cache-keying a statement costs more CPU than SQLite takes to run it,
and a renewal runs thousands of times a second.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import sqlalchemy as sa

from relaytrain.api.labels import labels_match
from relaytrain.api.status import AttemptOutcome, FailureClass, RunStatus
from relaytrain.config import RetryPolicy
from relaytrain.errors import CommanderRecovering, LeaseLost, NotFound

from ..policy import MACHINE_AVOID_S, next_status
from . import beat, evals, events
from . import checkpoints as ckpts
from . import metrics as series
from . import runs as run_rows
from .clock import DATABASE_NOW
from .schema import attempts, checkpoints, metrics, runs

CLAIM_BATCH = 64  # candidates read per page, without locks
FALLBACKS = 4  # older durable checkpoints a grant offers in case the newest turns out corrupt

# What the fence needs of a run; calls that need the rest (config, retries) ask for the whole row.
_LEASE_COLUMNS = (runs.c.run_id, runs.c.epoch, runs.c.status, runs.c.holder, runs.c.lease_expires_at,
                  runs.c.lease_ttl_s, runs.c.cancel_requested)


def _fence_statement(columns: tuple[sa.ColumnElement, ...], dated: bool) -> sa.Select:
    """The run row, locked; ``dated``: with the database's clock beside it, read *above* the lock
    (an outer query over the locking one), so after any wait for it. Read in the locking query
    itself, PostgreSQL evaluates it before the wait (:mod:`.clock`)."""
    locked = sa.select(*columns).where(runs.c.run_id == sa.bindparam("run_id")).with_for_update()
    if not dated:
        return locked
    return sa.select(locked.subquery("locked"), DATABASE_NOW.label("database_now"))


_FENCE = {(whole, dated): _fence_statement(tuple(runs.c) if whole else _LEASE_COLUMNS, dated)
          for whole in (True, False) for dated in (True, False)}
_EXTEND_LEASE = (
    runs.update()
    .where(runs.c.run_id == sa.bindparam("b_run_id"))
    .values(lease_expires_at=sa.bindparam("b_expires_at"), updated_at=sa.bindparam("b_now"))
)
# Progress (metric ingest) runs about as often as renewals: its statements are built once too.
_INSERT_METRICS = metrics.insert()
_SET_STEP = (
    runs.update()
    .where(runs.c.run_id == sa.bindparam("b_run_id"))
    .values(step=sa.bindparam("b_step"), updated_at=sa.bindparam("b_now"))
)
_SET_STEP_END = (
    attempts.update()
    .where(attempts.c.run_id == sa.bindparam("b_run_id"), attempts.c.epoch == sa.bindparam("b_epoch"))
    .values(step_end=sa.bindparam("b_step"))
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


def _claimable_now() -> tuple[sa.ColumnElement[bool], ...]:
    parent = runs.alias("parent")
    ready_parent = (
        sa.select(parent.c.run_id).where(parent.c.run_id == runs.c.depends_on, parent.c.status == RunStatus.SUCCEEDED)
    ).exists()
    return (runs.c.status == RunStatus.QUEUED, runs.c.not_before <= sa.bindparam("now"),
            sa.or_(runs.c.depends_on.is_(None), ready_parent))


CLAIMABLE_NOW = _claimable_now()
"""A queued run past its backoff whose ``init_from`` run (if any) succeeded; parameter ``now``."""


NOT_AVOIDING = sa.or_(runs.c.avoid_worker.is_(None), runs.c.avoid_worker != sa.bindparam("worker_id"),
                     runs.c.avoid_until <= sa.bindparam("now"))
"""Anti-affinity: the run does not avoid the claiming worker ``worker_id`` at ``now`` (a machine fault
of that worker's ended its last attempt less than ``policy.MACHINE_AVOID_S`` ago). A filter on the
rows the queue's index already reads: the claim reads no more rows than before."""


def _claim_statements(with_kinds: bool) -> _ClaimStatements:
    """Parameters: ``now``, ``gpus``, ``worker_id``, with ``kinds`` a list of kinds; ``after_priority``,
    ``after_created``, ``after_run_id`` for the next page; ``candidates`` for the lock."""
    claimable = [*CLAIMABLE_NOW, runs.c.gpus <= sa.bindparam("gpus"), NOT_AVOIDING]
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
    .where(runs.c.status == RunStatus.RUNNING, runs.c.lease_expires_at <= sa.bindparam("now"))
    .with_for_update(skip_locked=True)
)
_GRANT = (
    runs.update()
    .where(runs.c.run_id == sa.bindparam("b_run_id"), runs.c.epoch == sa.bindparam("b_epoch"),
           runs.c.status == RunStatus.QUEUED)
    .values(status=RunStatus.RUNNING, holder=sa.bindparam("b_holder"), epoch=sa.bindparam("b_new_epoch"),
            lease_expires_at=sa.bindparam("b_expires_at"), step=sa.bindparam("b_step"),
            updated_at=sa.bindparam("b_now"), avoid_worker=None, avoid_until=None)
)
_OPEN_ATTEMPT = attempts.insert()
_ATTEMPT_STEPS = (
    sa.select(attempts.c.step_start, attempts.c.step_end)
    .where(attempts.c.run_id == sa.bindparam("run_id"), attempts.c.epoch == sa.bindparam("epoch"))
)


# -- grant ---------------------------------------------------------------------------------------


def claim(conn: sa.Connection, worker_id: str, *, gpus: int, labels: dict[str, str], kinds: list[str] | None,
          price_per_hour: float | None, now: float) -> dict[str, Any] | None:
    """Grant the best run this worker can serve, or None. Reclaim expired leases first (:func:`expire`)."""
    chosen = _pick(conn, worker_id, gpus=gpus, labels=labels, kinds=kinds, now=now)
    if chosen is None:
        return None
    epoch = chosen["epoch"] + 1
    expires_at = now + chosen["lease_ttl_s"]
    durable = ckpts.newest(conn, chosen["run_id"], limit=FALLBACKS + 1)
    latest = durable[0] if durable else None
    resume_step = latest["step"] if latest else 0
    updated = conn.execute(_GRANT, {
        "b_run_id": chosen["run_id"], "b_epoch": chosen["epoch"], "b_holder": worker_id, "b_new_epoch": epoch,
        "b_expires_at": expires_at, "b_step": resume_step, "b_now": now,
    }).rowcount
    assert updated == 1, "the queue row changed under its lock"
    series.supersede(conn, chosen["run_id"], epoch, resume_step)
    conn.execute(_OPEN_ATTEMPT, {
        "run_id": chosen["run_id"], "epoch": epoch, "worker_id": worker_id, "granted_at": now,
        "last_renewed_at": now, "step_start": resume_step, "gpus": gpus, "price_per_hour": price_per_hour,
    })
    events.add(conn, chosen["run_id"], "granted",
               f"lease epoch {epoch} granted to {worker_id}, resuming at step {resume_step}",
               {"epoch": epoch, "worker_id": worker_id, "step": resume_step}, now)
    return {
        "eval_checkpoints": evals.checkpoints_to_score(conn, chosen) if chosen["kind"] == "eval" else [],
        "fallback_checkpoints": durable[1:],
        "run_id": chosen["run_id"],
        "kind": chosen["kind"],
        "config": chosen["config"],
        "epoch": epoch,
        "ttl_s": chosen["lease_ttl_s"],
        "expires_at": expires_at,
        "max_steps": chosen["max_steps"],
        "checkpoint": latest,
        "init_checkpoint": ckpts.latest(conn, chosen["depends_on"]) if chosen["depends_on"] else None,
    }


def _pick(conn: sa.Connection, worker_id: str, *, gpus: int, labels: dict[str, str], kinds: list[str] | None,
          now: float) -> dict[str, Any] | None:
    """The highest-priority, oldest queued run this worker can serve (and that does not avoid it:
    :data:`NOT_AVOIDING`), locked for update.

    Candidates are read in queue order a page at a time, without locks. Among those whose
    labels the worker carries, the first still claimable is then locked, every condition
    checked again (PostgreSQL: ``ORDER BY … LIMIT 1 FOR UPDATE SKIP LOCKED``, which locks only
    the row it returns). A claim so locks only the run it takes, and a concurrent claim skips
    that one run, not a whole page of them. On SQLite the transaction already holds the
    database lock, so the first candidate is always free.
    """
    statements = _CLAIM[bool(kinds)]
    params: dict[str, Any] = {"now": now, "gpus": gpus, "worker_id": worker_id}
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


# -- fence ---------------------------------------------------------------------------------------


class Fenced(NamedTuple):
    run: dict  # the run row (or only the lease's columns), locked
    now: float  # the time the fenced call is dated by


def fenced_run(conn: sa.Connection, run_id: str, worker_id: str, epoch: int, now: float | None, *,
               whole: bool = True) -> Fenced:
    """The run row, locked, if ``(worker_id, epoch)`` holds its live lease; else LeaseLost.
    Without ``whole``, only the lease's columns (``_LEASE_COLUMNS``). ``now`` None (PostgreSQL):
    the database's clock, read by the same statement once the row lock is held, and returned."""
    dated = now is None
    assert not dated or conn.dialect.name == "postgresql", "only PostgreSQL has a clock the fence can read"
    row = conn.execute(_FENCE[whole, dated], {"run_id": run_id}).mappings().first()
    if row is None:
        raise NotFound(f"no run named {run_id!r}")
    row = dict(row)
    if dated:
        now = row.pop("database_now")
    if row["epoch"] != epoch:
        raise LeaseLost(f"run {run_id}: epoch {epoch} is stale (current epoch is {row['epoch']})")
    if row["status"] != RunStatus.RUNNING or row["holder"] != worker_id:
        raise LeaseLost(f"run {run_id}: {worker_id} does not hold a live lease at epoch {epoch}")
    if row["lease_expires_at"] is None or row["lease_expires_at"] <= now:
        if beat.outage(conn, now) is not None:  # perhaps only for the outage: the next sweep decides
            raise CommanderRecovering(f"run {run_id}: the commander is back from an outage and has not yet "
                                      "extended the leases it interrupted; retry")
        raise LeaseLost(f"run {run_id}: the lease at epoch {epoch} has expired")
    return Fenced(row, now)


def renew(conn: sa.Connection, run_id: str, worker_id: str, epoch: int, now: float | None) -> dict[str, Any]:
    """Extend a live lease by its ttl. Returns ``expires_at``, ``ttl_s``, ``cancel_requested``."""
    row, now = fenced_run(conn, run_id, worker_id, epoch, now, whole=False)
    expires_at = now + row["lease_ttl_s"]
    conn.execute(_EXTEND_LEASE, {"b_run_id": run_id, "b_expires_at": expires_at, "b_now": now})
    conn.execute(_MARK_RENEWED, {"b_run_id": run_id, "b_epoch": epoch, "b_now": now})
    return {"expires_at": expires_at, "ttl_s": row["lease_ttl_s"], "cancel_requested": row["cancel_requested"]}


def record_progress(conn: sa.Connection, run_id: str, worker_id: str, epoch: int, points: list[dict[str, Any]],
                    now: float | None) -> int:
    """Store progress points ``{step, metrics}`` under a live lease; returns the run's step."""
    now = fenced_run(conn, run_id, worker_id, epoch, now, whole=False).now
    rows = [
        {"run_id": run_id, "epoch": epoch, "step": p["step"], "name": name, "value": value, "ts": now}
        for p in points
        for name, value in p.get("metrics", {}).items()
    ]
    if rows:
        conn.execute(_INSERT_METRICS, rows)
    step = points[-1]["step"]
    conn.execute(_SET_STEP, {"b_run_id": run_id, "b_step": step, "b_now": now})
    conn.execute(_SET_STEP_END, {"b_run_id": run_id, "b_epoch": epoch, "b_step": step})
    return step


def commit_checkpoint(conn: sa.Connection, run_id: str, worker_id: str, epoch: int, *, step: int, uri: str,
                      manifest_sha256: str, revision: str | None, now: float | None) -> dict[str, Any]:
    """Record a checkpoint that is durable in the store, under a live lease; idempotent for the same
    epoch and step. ``revision``: the store's commit holding it, for stores with history (the Hub).
    Queues the run's automatic evaluation of that step, if it asks for one."""
    run, now = fenced_run(conn, run_id, worker_id, epoch, now)
    key = (checkpoints.c.run_id == run_id, checkpoints.c.step == step, checkpoints.c.epoch == epoch)
    if conn.execute(sa.select(checkpoints.c.id).where(*key)).first():
        conn.execute(checkpoints.update().where(*key).values(uri=uri, manifest_sha256=manifest_sha256,
                                                              revision=revision))
    else:
        conn.execute(checkpoints.insert().values(run_id=run_id, step=step, epoch=epoch, uri=uri,
                                                 manifest_sha256=manifest_sha256, revision=revision, durable=True,
                                                 created_at=now))
    events.add(conn, run_id, "checkpoint", f"checkpoint at step {step} is durable: {uri}",
               {"step": step, "epoch": epoch, "uri": uri}, now)
    # A durable checkpoint proves training reached its step, whatever progress has said so far.
    reached = sa.case((attempts.c.step_end < step, step), else_=attempts.c.step_end)
    conn.execute(
        attempts.update()
        .where(attempts.c.run_id == run_id, attempts.c.epoch == epoch)
        .values(step_end=sa.func.coalesce(reached, step))
    )
    evals.auto_eval(conn, run, step, now)
    return ckpts.latest(conn, run_id, step=step, epoch=epoch)


def record_resume(conn: sa.Connection, run_id: str, worker_id: str, epoch: int, *, step: int, note: str | None,
                  now: float | None) -> None:
    """The holder resumed at ``step`` (0: from scratch); ``note`` says why not from a newer one.
    Earlier attempts' points past ``step`` are superseded (:func:`.metrics.supersede`)."""
    now = fenced_run(conn, run_id, worker_id, epoch, now, whole=False).now
    series.supersede(conn, run_id, epoch, step)
    conn.execute(
        attempts.update()
        .where(attempts.c.run_id == run_id, attempts.c.epoch == epoch)
        .values(step_start=step, step_end=step, resume_note=note)
    )
    conn.execute(runs.update().where(runs.c.run_id == run_id).values(step=step, updated_at=now))
    message = f"epoch {epoch} resumed at step {step}" + (f": {note}" if note else "")
    events.add(conn, run_id, "resumed", message, {"epoch": epoch, "step": step}, now)


# -- end -----------------------------------------------------------------------------------------


def release(conn: sa.Connection, run_id: str, worker_id: str, epoch: int, *, outcome: AttemptOutcome,
            failure_class: FailureClass | None, message: str | None, stderr_tail: str | None, step: int | None,
            now: float | None) -> dict[str, Any]:
    """End a live lease with an outcome; the run's next status is the retry policy's
    (:func:`~relaytrain.commander.policy.next_status`). Returns it. A machine fault keeps the run
    from this worker for ``MACHINE_AVOID_S`` unless another worker takes it first (anti-affinity)."""
    row, now = fenced_run(conn, run_id, worker_id, epoch, now)
    _close_attempt(conn, row, outcome, failure_class, message, stderr_tail, step, now)
    policy = RetryPolicy.model_validate(row["config"].get("retry", {}))
    decision = next_status(outcome, failure_class, row["retries_used"], policy,
                           cancel_requested=row["cancel_requested"], message=message)
    not_before = now + decision.backoff_s
    last_error = row["last_error"] if decision.last_error is None else decision.last_error
    avoid = ({"avoid_worker": worker_id, "avoid_until": now + MACHINE_AVOID_S}
             if failure_class == FailureClass.MACHINE and decision.status == RunStatus.QUEUED else {})
    run_rows.set_status(conn, row, decision.status, now, retries_used=decision.retries_used, not_before=not_before,
                        last_error=last_error, **avoid)
    detail = f"{outcome}" + (f" ({failure_class}): {message}" if failure_class else "")
    events.add(conn, run_id, "released", f"epoch {epoch} ended {detail}; run is {decision.status}",
               {"epoch": epoch, "outcome": outcome, "failure_class": failure_class, "status": decision.status}, now)
    return {"status": decision.status, "retries_used": decision.retries_used, "not_before": not_before}


def expire(conn: sa.Connection, now: float) -> int:
    """Reclaim every lease past its deadline (outcome ``lost``). Returns how many were reclaimed.
    After an outage of the commander, the leases it interrupted are extended first (:func:`.beat.recover`)."""
    beat.recover(conn, now)
    rows = conn.execute(_EXPIRED, {"now": now}).mappings().all()
    for row in rows:
        row = dict(row)
        message = f"lease expired: no renewal from {row['holder']}"
        _close_attempt(conn, row, AttemptOutcome.LOST, None, message, None, None, now)
        policy = RetryPolicy.model_validate(row["config"].get("retry", {}))
        decision = next_status(AttemptOutcome.LOST, None, row["retries_used"], policy,
                               cancel_requested=row["cancel_requested"])
        run_rows.set_status(conn, row, decision.status, now, not_before=now)
        events.add(conn, row["run_id"], "expired", f"epoch {row['epoch']} {message}; run is {decision.status}",
                   {"epoch": row["epoch"], "worker_id": row["holder"]}, now)
    return len(rows)


def _close_attempt(conn: sa.Connection, run: dict, outcome: AttemptOutcome, failure_class: FailureClass | None,
                   message: str | None, stderr_tail: str | None, step: int | None, now: float) -> None:
    attempt = conn.execute(_ATTEMPT_STEPS, {"run_id": run["run_id"], "epoch": run["epoch"]}).first()
    step_end = step
    if step_end is None:
        step_end = attempt.step_end if attempt.step_end is not None else attempt.step_start
    latest = ckpts.latest(conn, run["run_id"])
    durable = max(latest["step"] if latest else 0, attempt.step_start)
    conn.execute(
        attempts.update()
        .where(attempts.c.run_id == run["run_id"], attempts.c.epoch == run["epoch"])
        .values(ended_at=now, outcome=outcome, failure_class=failure_class, message=message,
                stderr_tail=stderr_tail, step_end=step_end, steps_lost=max(0, step_end - durable))
    )
