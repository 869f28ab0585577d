"""The lease state machine (DESIGN §4), driven by Hypothesis on SQLite and PostgreSQL.

Random interleavings of submit, claim (with the anti-affinity after a machine fault), renew,
progress, resume reports, log shipping, checkpoint commit, release (every outcome and failure
class), cancel, expiry, the sweeper (its beat, and the leases extended after an outage of the
commander) and clock jumps, by three workers that keep every lease they
were ever granted (so stale holders keep calling), go through the Store's public methods with a
modelled clock (``now=``). A model predicts every answer; after every step the invariants are
checked against the database itself:

- at most one holder per run: one open attempt per run, and status ``running`` ⇔ a holder;
- epochs only grow;
- no write from a stale epoch is accepted: every call the model refuses raises LeaseLost,
  NotFound or InvalidState, and no row of any table changed;
- durable checkpoints only move forward: a run's latest durable step never decreases;
- a terminal run never changes again (status, epoch, holder).

CI runs a fixed, derandomized set of examples, the same on every run. To explore more, set
``RELAY_STATEMACHINE_EXAMPLES`` (e.g. 2000): that many examples from a random seed, with
Hypothesis's example database so a failure found is replayed first next time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from relaytrain.api.status import TERMINAL, AttemptOutcome, FailureClass, RunStatus
from relaytrain.commander.policy import MACHINE_AVOID_S
from relaytrain.commander.store import Store
from relaytrain.commander.store.schema import attempts, checkpoints, metadata, runs
from relaytrain.config import parse_run_config
from relaytrain.errors import CommanderRecovering, InvalidState, LeaseLost, NotFound

EXAMPLES_ENV = "RELAY_STATEMACHINE_EXAMPLES"
CI_EXAMPLES = 30
STEPS = 60
WORKERS = ("w0", "w1", "w2")
TTLS = (10.0, 30.0)
BACKOFF_S = 5.0  # base = cap: every transient retry waits this long
# Clock jumps around both ttls: within a lease, exactly at its expiry, past it.
JUMPS = (1.0, 2.0, 3.0, 5.0, 9.0, 10.0, 11.0, 29.0, 30.0, 31.0, 75.0, MACHINE_AVOID_S)
SHA = "cd" * 32
REFUSED = (LeaseLost, NotFound, InvalidState, CommanderRecovering)
STALE_AFTER_S = 20.0  # the sweeper's beat: a longer silence is an outage of the commander
# Who calls with a lease (LeaseMachine.caller): mostly its run's current holder, as it is.
CALLER = {"current": st.sampled_from((True, True, True, False)),
          "imposter": st.sampled_from((None,) * 6 + WORKERS), "forged": st.sampled_from((0,) * 5 + (1,))}
RELEASES = (
    (AttemptOutcome.SUCCEEDED, None),
    (AttemptOutcome.PREEMPTED, None),
    (AttemptOutcome.FAILED, FailureClass.TRANSIENT),
    (AttemptOutcome.FAILED, FailureClass.PERMANENT),
    (AttemptOutcome.FAILED, FailureClass.MACHINE),
    (AttemptOutcome.CANCELLED, None),
)


def machine_settings() -> settings:
    wanted = os.environ.get(EXAMPLES_ENV)
    common = {"stateful_step_count": STEPS, "deadline": None,
              "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
    if wanted:
        return settings(max_examples=int(wanted), **common)
    return settings(max_examples=CI_EXAMPLES, derandomize=True, database=None, **common)


@dataclass
class ModelRun:
    run_id: str
    ttl: float
    priority: int
    created_at: float
    max_retries: int
    status: RunStatus = RunStatus.QUEUED
    epoch: int = 0
    holder: str | None = None
    expires_at: float | None = None
    step: int = 0
    durable: int | None = None
    retries_used: int = 0
    not_before: float = 0.0
    cancel_requested: bool = False
    avoid_worker: str | None = None  # anti-affinity: a machine fault of this worker's ended the last attempt
    avoid_until: float | None = None

    def takes(self, worker: str, now: float) -> bool:
        """Whether ``worker`` may be granted this run at ``now`` (it is queued, past its backoff, and
        does not avoid ``worker``)."""
        avoided = self.avoid_worker == worker and self.avoid_until is not None and now < self.avoid_until
        return self.status == RunStatus.QUEUED and self.not_before <= now and not avoided

    def live(self, worker: str, epoch: int, now: float) -> bool:
        """Whether ``(worker, epoch)`` holds this run's live lease at ``now``: the fence."""
        return (self.status == RunStatus.RUNNING and self.epoch == epoch and self.holder == worker
                and self.expires_at is not None and self.expires_at > now)

    def end_lease(self, status: RunStatus, not_before: float) -> None:
        self.status, self.holder, self.expires_at, self.not_before = status, None, None, not_before


@dataclass(frozen=True)
class Lease:
    """A grant a worker received: it keeps it, and keeps calling with it, even once stale."""

    run_id: str
    worker: str
    epoch: int


def table_rows(store: Store) -> dict[str, list[tuple]]:
    """Every row of every table, in a fixed order: what a refused call must leave unchanged."""
    with store.engine.connect() as conn:
        return {t.name: sorted(map(tuple, conn.execute(sa.select(t)).all()), key=repr) for t in metadata.sorted_tables}


def wipe(store: Store) -> None:
    """Empty every table: one database serves all the examples of a test."""
    with store.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())


class LeaseMachine(RuleBasedStateMachine):
    leases = Bundle("leases")
    run_ids = Bundle("run_ids")

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        wipe(store)  # also here: an example that failed half-way must not leak into the next
        self.now = 1000.0
        self.runs: dict[str, ModelRun] = {}
        self.seen_epoch: dict[str, int] = {}
        self.seen_durable: dict[str, int] = {}
        self.ended: dict[str, tuple] = {}
        self.log_end: dict[tuple[str, int], int] = {}  # (run, epoch) → the offset past its shipped output
        self.last_beat: float | None = None  # the sweeper's last beat (Store.sweep)

    def teardown(self) -> None:
        wipe(self.store)

    # -- helpers -----------------------------------------------------------------------------

    def refused(self, call, *args: Any, **kwargs: Any) -> None:
        """The store must refuse this call, and change nothing."""
        before = table_rows(self.store)
        with pytest.raises(REFUSED):
            call(*args, now=self.now, **kwargs)
        assert table_rows(self.store) == before, f"a refused {call.__name__} changed rows"

    def model_recover(self) -> None:
        """After a silence of the sweeper's beat longer than STALE_AFTER_S (an outage of the
        commander), the leases still live when it stopped are extended by the silence."""
        if self.last_beat is None or self.now - self.last_beat <= STALE_AFTER_S:
            return
        silence = self.now - self.last_beat
        for r in self.runs.values():
            if r.status == RunStatus.RUNNING and r.expires_at is not None and r.expires_at > self.last_beat:
                r.expires_at += silence
        self.last_beat = self.now

    def model_expire(self) -> int:
        self.model_recover()  # every expiry recovers from an outage first
        expired = [r for r in self.runs.values()
                   if r.status == RunStatus.RUNNING and r.expires_at is not None and r.expires_at <= self.now]
        for r in expired:
            r.end_lease(RunStatus.CANCELLED if r.cancel_requested else RunStatus.QUEUED, self.now)
        return len(expired)

    def caller(self, lease: Lease, current: bool, imposter: str | None, forged: int) -> tuple[Lease, str, int]:
        """Who calls, with what: ``lease`` (a grant some worker kept, perhaps stale), or with
        ``current`` the lease its run's holder holds now; sent by its worker or by ``imposter``,
        with its epoch or a ``forged`` later one."""
        r = self.runs[lease.run_id]
        if current and r.holder is not None:
            lease = Lease(r.run_id, r.holder, r.epoch)
        return lease, imposter or lease.worker, lease.epoch + forged

    # -- rules -------------------------------------------------------------------------------

    @initialize(target=run_ids, ttls=st.lists(st.sampled_from(TTLS), min_size=1, max_size=3))
    def submit_some(self, ttls: list[float]):
        return multiple(*(self.submit(ttl, priority=0, max_retries=1) for ttl in ttls))

    @rule(target=run_ids, ttl=st.sampled_from(TTLS), priority=st.integers(0, 1), max_retries=st.integers(0, 2))
    def submit(self, ttl: float, priority: int, max_retries: int) -> str:
        run_id = f"r{len(self.runs)}"
        config = parse_run_config({
            "run_id": run_id, "kind": "command", "max_steps": 1000, "priority": priority,
            "trainer": {"command": "true"},
            "lease": {"ttl_s": ttl, "margin_s": 5, "grace_s": 2},
            "retry": {"max_retries": max_retries, "backoff_base_s": BACKOFF_S, "backoff_cap_s": BACKOFF_S},
        })
        self.store.submit_run(config, now=self.now)
        self.runs[run_id] = ModelRun(run_id, ttl, priority, self.now, max_retries, not_before=self.now)
        return run_id

    @rule(target=leases, worker=st.sampled_from(WORKERS))
    def claim(self, worker: str):
        self.model_expire()  # a claim reclaims expired leases first
        ready = [r for r in self.runs.values() if r.takes(worker, self.now)]
        grant = self.store.claim_run(worker, now=self.now)
        if not ready:
            assert grant is None, f"granted {grant and grant['run_id']} though nothing is ready"
            return multiple()
        best = min(ready, key=lambda r: (-r.priority, r.created_at, r.run_id))
        assert grant is not None, f"nothing granted though {best.run_id} is ready"
        best.status, best.holder, best.epoch = RunStatus.RUNNING, worker, best.epoch + 1
        best.expires_at, best.step = self.now + best.ttl, best.durable or 0
        best.avoid_worker = best.avoid_until = None
        got = (grant["run_id"], grant["epoch"], grant["expires_at"], (grant["checkpoint"] or {}).get("step"))
        assert got == (best.run_id, best.epoch, best.expires_at, best.durable)
        return Lease(best.run_id, worker, best.epoch)

    @rule(lease=leases, **CALLER)
    def renew(self, lease: Lease, current: bool, imposter: str | None, forged: int) -> None:
        lease, worker, epoch = self.caller(lease, current, imposter, forged)
        r = self.runs[lease.run_id]
        if not r.live(worker, epoch, self.now):
            return self.refused(self.store.renew_lease, lease.run_id, worker, epoch)
        answer = self.store.renew_lease(lease.run_id, worker, epoch, now=self.now)
        r.expires_at = self.now + r.ttl
        assert answer == {"expires_at": r.expires_at, "ttl_s": r.ttl, "cancel_requested": r.cancel_requested}

    @rule(lease=leases, **CALLER,
          step=st.integers(0, 200))
    def progress(self, lease: Lease, current: bool, imposter: str | None, forged: int, step: int) -> None:
        lease, worker, epoch = self.caller(lease, current, imposter, forged)
        r = self.runs[lease.run_id]
        points = [{"step": step, "metrics": {"loss": 1.0 / (step + 1)}}]
        if not r.live(worker, epoch, self.now):
            return self.refused(self.store.record_progress, lease.run_id, worker, epoch, points)
        assert self.store.record_progress(lease.run_id, worker, epoch, points, now=self.now) == step
        r.step = step

    @rule(lease=leases, **CALLER,
          step=st.integers(0, 200))
    def commit_checkpoint(self, lease: Lease, current: bool, imposter: str | None, forged: int, step: int) -> None:
        lease, worker, epoch = self.caller(lease, current, imposter, forged)
        r = self.runs[lease.run_id]
        uri = f"file:///store/{lease.run_id}/e{epoch}/step_{step}"
        if not r.live(worker, epoch, self.now):
            return self.refused(self.store.commit_checkpoint, lease.run_id, worker, epoch, step=step, uri=uri,
                                manifest_sha256=SHA)
        ref = self.store.commit_checkpoint(lease.run_id, worker, epoch, step=step, uri=uri, manifest_sha256=SHA,
                                           now=self.now)
        assert (ref["step"], ref["epoch"], ref["uri"]) == (step, epoch, uri)
        r.durable = step if r.durable is None else max(r.durable, step)

    @rule(lease=leases, **CALLER, step=st.integers(0, 200))
    def record_resume(self, lease: Lease, current: bool, imposter: str | None, forged: int, step: int) -> None:
        lease, worker, epoch = self.caller(lease, current, imposter, forged)
        r = self.runs[lease.run_id]
        if not r.live(worker, epoch, self.now):
            return self.refused(self.store.record_resume, lease.run_id, worker, epoch, step=step)
        self.store.record_resume(lease.run_id, worker, epoch, step=step, now=self.now)
        r.step = step

    @rule(lease=leases, **CALLER, size=st.integers(1, 64))
    def ship_logs(self, lease: Lease, current: bool, imposter: str | None, forged: int, size: int) -> None:
        lease, worker, epoch = self.caller(lease, current, imposter, forged)
        r = self.runs[lease.run_id]
        seq = self.log_end.get((lease.run_id, epoch), 0)
        chunks = [{"seq": seq, "stream": "stdout", "ts": self.now, "text": "x" * size}]
        if not r.live(worker, epoch, self.now):
            return self.refused(self.store.append_logs, lease.run_id, worker, epoch, chunks)
        answer = self.store.append_logs(lease.run_id, worker, epoch, chunks, now=self.now)
        self.log_end[(lease.run_id, epoch)] = seq + size
        assert answer["end"] == seq + size

    @rule(lease=leases, **CALLER,
          how=st.sampled_from(RELEASES))
    def release(self, lease: Lease, current: bool, imposter: str | None, forged: int,
                how: tuple[AttemptOutcome, FailureClass | None]) -> None:
        lease, worker, epoch = self.caller(lease, current, imposter, forged)
        outcome, failure_class = how
        r = self.runs[lease.run_id]
        if not r.live(worker, epoch, self.now):
            return self.refused(self.store.release_lease, lease.run_id, worker, epoch, outcome=outcome,
                                failure_class=failure_class, message="from the state machine")
        answer = self.store.release_lease(lease.run_id, worker, epoch, outcome=outcome, failure_class=failure_class,
                                          message="from the state machine", now=self.now)
        not_before = self.now
        if outcome == AttemptOutcome.SUCCEEDED:
            status = RunStatus.SUCCEEDED
        elif outcome == AttemptOutcome.CANCELLED or r.cancel_requested:
            status = RunStatus.CANCELLED
        elif outcome == AttemptOutcome.PREEMPTED:
            status = RunStatus.QUEUED
        elif failure_class == FailureClass.MACHINE:  # spends no retry; kept from this worker a while
            status = RunStatus.QUEUED
            r.avoid_worker, r.avoid_until = worker, self.now + MACHINE_AVOID_S
        elif failure_class == FailureClass.PERMANENT:
            status = RunStatus.FAILED
        else:
            r.retries_used += 1
            status = RunStatus.FAILED if r.retries_used > r.max_retries else RunStatus.QUEUED
            not_before = self.now + BACKOFF_S
        r.end_lease(status, not_before)
        assert (answer["status"], answer["retries_used"]) == (status, r.retries_used)

    @rule(lease=leases)
    def machine_fault(self, lease: Lease) -> None:
        """The holder's machine failed the run: released as such, then kept from that worker
        (anti-affinity). Its own rule, so that the claims after it are often enough the same worker's."""
        self.release(lease, True, None, 0, (AttemptOutcome.FAILED, FailureClass.MACHINE))

    @rule(run_id=run_ids)
    def cancel(self, run_id: str) -> None:
        r = self.runs[run_id]
        if r.status in TERMINAL:
            return self.refused(self.store.cancel_run, run_id)
        self.store.cancel_run(run_id, now=self.now)
        if r.status == RunStatus.QUEUED:
            r.end_lease(RunStatus.CANCELLED, r.not_before)
        else:
            r.cancel_requested = True

    @rule(worker=st.sampled_from(WORKERS), epoch=st.integers(1, 3))
    def write_to_unknown_run(self, worker: str, epoch: int) -> None:
        self.refused(self.store.renew_lease, "no-such-run", worker, epoch)
        self.refused(self.store.cancel_run, "no-such-run")

    @rule(dt=st.sampled_from(JUMPS), then=st.sampled_from(("nothing", "expire", "sweep")))
    def jump_clock(self, dt: float, then: str) -> None:
        """Time passes; then, perhaps, leases are expired, or the sweeper runs: it also beats, and after
        a silence longer than STALE_AFTER_S extends the leases the outage interrupted."""
        self.now += dt
        if then == "expire":
            assert self.store.expire_leases(now=self.now) == self.model_expire()
        elif then == "sweep":
            expired = self.store.sweep(stale_after_s=STALE_AFTER_S, now=self.now)
            self.model_recover()
            self.last_beat = self.now
            assert expired == self.model_expire()

    @rule(lease=leases, offset=st.sampled_from((-1.0, 0.0, 1.0)))
    def jump_to_expiry(self, lease: Lease, offset: float) -> None:
        """To just before, exactly at, or just past the deadline of a lease (if still ahead)."""
        deadline = self.runs[lease.run_id].expires_at
        if deadline is not None and deadline + offset > self.now:
            self.now = deadline + offset

    # -- invariants, against the database ------------------------------------------------------

    @invariant()
    def database_upholds_the_lease_invariants(self) -> None:
        with self.store.engine.connect() as conn:
            rows = {r.run_id: r for r in conn.execute(sa.select(runs))}
            open_attempts: dict[str, list] = {}
            for a in conn.execute(sa.select(attempts).where(attempts.c.ended_at.is_(None))):
                open_attempts.setdefault(a.run_id, []).append(a)
            durable = dict(conn.execute(
                sa.select(checkpoints.c.run_id, sa.func.max(checkpoints.c.step))
                .where(checkpoints.c.durable.is_(True)).group_by(checkpoints.c.run_id)).all())
        assert set(rows) == set(self.runs)
        for run_id, row in rows.items():
            held = open_attempts.get(run_id, [])
            assert len(held) <= 1, f"{run_id}: {len(held)} open attempts"
            running = row.status == RunStatus.RUNNING
            assert running == (row.holder is not None) == bool(held), f"{run_id}: {row.status} held by {row.holder}"
            if held:
                assert (held[0].epoch, held[0].worker_id) == (row.epoch, row.holder)
            assert row.epoch >= self.seen_epoch.get(run_id, 0), f"{run_id}: epoch went back to {row.epoch}"
            self.seen_epoch[run_id] = row.epoch
            if run_id in durable:
                assert durable[run_id] >= self.seen_durable.get(run_id, -1), f"{run_id}: durable step went back"
                self.seen_durable[run_id] = durable[run_id]
            if row.status in TERMINAL:
                ended = (row.status, row.epoch, row.holder, row.lease_expires_at)
                assert self.ended.setdefault(run_id, ended) == ended, f"{run_id} changed after it ended"
            m = self.runs[run_id]
            assert (row.status, row.epoch, row.holder, row.lease_expires_at, row.step, row.retries_used,
                    row.cancel_requested, durable.get(run_id), row.avoid_worker, row.avoid_until) == (
                m.status, m.epoch, m.holder, m.expires_at, m.step, m.retries_used, m.cancel_requested, m.durable,
                m.avoid_worker, m.avoid_until)


@pytest.mark.timeout(900)  # passing takes seconds; a failure is shrunk for up to a few minutes
def test_lease_state_machine(store):
    run_state_machine_as_test(lambda: LeaseMachine(store), settings=machine_settings())
