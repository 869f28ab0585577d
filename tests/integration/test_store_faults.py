"""A machine's fault in the store (DESIGN §7), on SQLite and PostgreSQL: it spends no retry, the run
avoids the worker whose machine failed it (anti-affinity), and a worker's condition is recorded."""

from __future__ import annotations

import pytest

from relaytrain.api.status import AttemptOutcome, FailureClass, RunStatus, WorkerCondition
from relaytrain.commander.policy import MACHINE_AVOID_S
from relaytrain.config import parse_run_config

DEGRADED = {"condition": WorkerCondition.DEGRADED, "reason": "disk full on worker w1 at /w: 1 MB free"}


def run(run_id: str, **extra) -> object:
    data = {"run_id": run_id, "kind": "command", "max_steps": 100, "trainer": {"command": "true"},
            "retry": {"max_retries": 1}}
    data.update(extra)
    return parse_run_config(data)


def machine_fault(store, run_id: str, worker: str, epoch: int, now: float) -> dict:
    return store.release_lease(run_id, worker, epoch, outcome=AttemptOutcome.FAILED,
                               failure_class=FailureClass.MACHINE, message=f"disk full on worker {worker}", now=now)


def test_machine_faults_spend_no_retry_and_requeue_at_once(store):
    store.submit_run(run("r"), now=1)
    for epoch in range(1, 5):  # more machine faults than the run has retries
        worker = f"w{epoch}"
        assert store.claim_run(worker, now=10 * epoch)["epoch"] == epoch
        answer = machine_fault(store, "r", worker, epoch, now=10 * epoch + 1)
        assert (answer["status"], answer["retries_used"], answer["not_before"]) == ("queued", 0, 10 * epoch + 1)
    detail = store.get_run("r")
    assert (detail["status"], detail["retries_used"]) == (RunStatus.QUEUED, 0)
    assert detail["last_error"].startswith("machine fault (not counted in retries): disk full on worker w4")
    assert [a["failure_class"] for a in detail["attempts"]] == [FailureClass.MACHINE] * 4


def test_the_run_avoids_the_faulty_worker_while_another_can_take_it(store):
    store.submit_run(run("r"), now=1)
    store.claim_run("sick", now=2)
    machine_fault(store, "r", "sick", 1, now=3)
    detail = store.get_run("r")
    assert (detail["avoid_worker"], detail["avoid_until"]) == ("sick", 3 + MACHINE_AVOID_S)
    assert store.claim_run("sick", now=4) is None  # not granted back to the machine that failed it
    grant = store.claim_run("healthy", now=5)
    assert (grant["run_id"], grant["epoch"]) == ("r", 2)
    detail = store.get_run("r")
    assert (detail["holder"], detail["avoid_worker"], detail["avoid_until"]) == ("healthy", None, None)


def test_the_faulty_worker_gets_the_run_back_after_the_delay(store):
    store.submit_run(run("r"), now=1)
    store.claim_run("sick", now=2)
    machine_fault(store, "r", "sick", 1, now=3)
    assert store.claim_run("sick", now=3 + MACHINE_AVOID_S - 0.5) is None
    assert store.claim_run("sick", now=3 + MACHINE_AVOID_S)["epoch"] == 2


def test_an_avoiding_run_does_not_hide_the_next_one(store):
    store.submit_run(run("first", priority=5), now=1)
    store.submit_run(run("second"), now=2)
    store.claim_run("sick", now=3)
    machine_fault(store, "first", "sick", 1, now=4)
    assert store.claim_run("sick", now=5)["run_id"] == "second"
    assert store.claim_run("other", now=6)["run_id"] == "first"


@pytest.mark.parametrize("failure_class", [FailureClass.TRANSIENT, None])
def test_other_endings_set_no_avoidance(store, failure_class):
    store.submit_run(run("r", retry={"max_retries": 3, "backoff_base_s": 0.5}), now=1)
    store.claim_run("w1", now=2)
    outcome = AttemptOutcome.FAILED if failure_class else AttemptOutcome.PREEMPTED
    store.release_lease("r", "w1", 1, outcome=outcome, failure_class=failure_class, message="x", now=3)
    assert store.get_run("r")["avoid_worker"] is None
    assert store.claim_run("w1", now=10)["epoch"] == 2


def test_a_worker_reports_its_condition_and_a_change_is_an_event(store):
    store.register_worker("w1", provider="local", hostname="h", version="0", resources={}, now=1)
    assert store.heartbeat("w1", now=2)["condition"] == WorkerCondition.OK
    info = store.heartbeat("w1", health=DEGRADED, now=3)
    assert (info["condition"], info["condition_reason"], info["condition_since"]) == (
        "degraded", DEGRADED["reason"], 3)
    info = store.heartbeat("w1", health=DEGRADED, now=4)  # the same: no new event, the same since
    assert info["condition_since"] == 3
    assert store.heartbeat("w1", now=5)["condition"] == "degraded"  # no health: left as it was
    info = store.heartbeat("w1", health={"condition": WorkerCondition.OK, "reason": None}, now=6)
    assert (info["condition"], info["condition_reason"], info["condition_since"]) == ("ok", None, 6)
    from relaytrain.commander.store.schema import events

    with store.engine.connect() as conn:
        said = [r.message for r in conn.execute(events.select().where(events.c.kind == "worker")
                                                .order_by(events.c.id))]
    assert said == ["worker w1 registered", f"worker w1 is degraded: {DEGRADED['reason']}", "worker w1 is ok"]
