"""The store's lease protocol and retry policy, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import pytest

from relaytrain.config import parse_run_config
from relaytrain.errors import InvalidState, LeaseLost, NotFound, RunExists

SHA = "ab" * 32


def run(run_id: str, **extra) -> object:
    data = {"run_id": run_id, "kind": "command", "max_steps": 100, "trainer": {"command": "true"}}
    data.update(extra)
    return parse_run_config(data)


def snapshot(store) -> tuple:
    """Everything a refused call must leave unchanged."""
    runs = store.list_runs(limit=500)["items"]
    details = [store.get_run(r["run_id"]) for r in runs]
    return tuple(sorted((d["run_id"], repr(sorted(d.items()))) for d in details))


def test_claim_order_is_priority_then_oldest(store):
    store.submit_run(run("old-low"), now=1)
    store.submit_run(run("new-high", priority=5), now=2)
    store.submit_run(run("old-high", priority=5), now=1.5)
    order = [store.claim_run(f"w{i}", now=10)["run_id"] for i in range(3)]
    assert order == ["old-high", "new-high", "old-low"]
    assert store.claim_run("w9", now=10) is None


def test_claim_matches_gpus_labels_and_kinds(store):
    store.submit_run(run("big", resources={"gpus": 2}), now=1)
    store.submit_run(run("labelled", resources={"labels": {"zone": "eu"}}), now=2)
    assert store.claim_run("cpu", now=5) is None
    assert store.claim_run("us", gpus=4, labels={"zone": "us"}, now=5)["run_id"] == "big"
    assert store.claim_run("us2", gpus=4, labels={"zone": "us"}, now=5) is None
    assert store.claim_run("eu", labels={"zone": "eu"}, kinds=["sft"], now=5) is None
    assert store.claim_run("eu", labels={"zone": "eu", "x": "y"}, kinds=["command"], now=5)["run_id"] == "labelled"


def test_label_filter_pages_past_unmatched_runs(store):
    for i in range(70):  # more than one claim batch of runs this worker cannot serve
        store.submit_run(run(f"eu-{i:03d}", resources={"labels": {"zone": "eu"}}), now=i)
    store.submit_run(run("us-only", resources={"labels": {"zone": "us"}}), now=100)
    assert store.claim_run("w", labels={"zone": "us"}, now=200)["run_id"] == "us-only"


def test_grant_increments_epoch_and_opens_attempt(store):
    store.submit_run(run("r"), now=1)
    grant = store.claim_run("w1", now=2)
    assert (grant["epoch"], grant["expires_at"], grant["checkpoint"]) == (1, 62, None)
    detail = store.get_run("r")
    assert (detail["status"], detail["holder"], detail["epoch"]) == ("running", "w1", 1)
    assert [(a["epoch"], a["worker_id"], a["ended_at"]) for a in detail["attempts"]] == [(1, "w1", None)]


def test_renew_extends_and_reports_cancel(store):
    store.submit_run(run("r"), now=1)
    store.claim_run("w1", now=2)
    assert store.renew_lease("r", "w1", 1, now=30) == {"expires_at": 90, "ttl_s": 60, "cancel_requested": False}
    store.cancel_run("r", now=31)
    assert store.renew_lease("r", "w1", 1, now=32)["cancel_requested"] is True
    assert store.release_lease("r", "w1", 1, outcome="cancelled", now=33)["status"] == "cancelled"


def test_stale_holder_is_fenced_everywhere(store):
    store.submit_run(run("r"), now=1)
    store.claim_run("old", now=2)
    store.record_progress("r", "old", 1, [{"step": 7, "metrics": {"loss": 1.5}}], now=3)
    store.commit_checkpoint("r", "old", 1, step=5, uri="file:///c/5", manifest_sha256=SHA, now=4)
    assert store.expire_leases(now=63) == 1
    grant = store.claim_run("new", now=64)
    assert grant["epoch"] == 2 and grant["checkpoint"]["step"] == 5
    before = snapshot(store)
    with pytest.raises(LeaseLost, match="stale"):
        store.renew_lease("r", "old", 1, now=65)
    with pytest.raises(LeaseLost):
        store.record_progress("r", "old", 1, [{"step": 9, "metrics": {}}], now=65)
    with pytest.raises(LeaseLost):
        store.commit_checkpoint("r", "old", 1, step=9, uri="file:///c/9", manifest_sha256=SHA, now=65)
    with pytest.raises(LeaseLost):
        store.release_lease("r", "old", 1, outcome="succeeded", now=65)
    with pytest.raises(LeaseLost, match="does not hold"):  # the right epoch from the wrong worker
        store.renew_lease("r", "old", 2, now=65)
    assert snapshot(store) == before
    # the old holder's step 7 is past the resume step 5: kept, but superseded (test_metric_series.py)
    kept = {"step": 7, "name": "loss", "value": 1.5, "epoch": 1, "superseded": True}
    assert store.list_metrics("r", names=["loss"], include_superseded=True) == [kept]


def test_expired_lease_refused_before_sweep(store):
    store.submit_run(run("r"), now=1)
    store.claim_run("w", now=2)
    with pytest.raises(LeaseLost, match="expired"):
        store.renew_lease("r", "w", 1, now=62)


def test_lost_lease_requeues_without_spending_a_retry(store):
    store.submit_run(run("r"), now=1)
    store.claim_run("w1", now=2)
    store.record_progress("r", "w1", 1, [{"step": 30, "metrics": {}}], now=10)
    store.commit_checkpoint("r", "w1", 1, step=20, uri="u", manifest_sha256=SHA, now=11)
    assert store.claim_run("w2", now=61) is None  # not yet expired
    grant = store.claim_run("w2", now=62.5)  # the claim reclaims the expired lease itself
    assert grant["epoch"] == 2
    detail = store.get_run("r")
    assert detail["retries_used"] == 0
    lost = detail["attempts"][0]
    assert (lost["outcome"], lost["step_end"], lost["steps_lost"]) == ("lost", 30, 10)
    assert detail["attempts"][1]["step_start"] == 20


def test_transient_failures_back_off_then_exhaust(store):
    store.submit_run(run("r", retry={"max_retries": 2, "backoff_base_s": 10, "backoff_cap_s": 15}), now=0)
    store.claim_run("w", now=1)
    out = store.release_lease("r", "w", 1, outcome="failed", failure_class="transient", message="CUDA OOM", now=2)
    assert out == {"status": "queued", "retries_used": 1, "not_before": 12}
    assert store.claim_run("w", now=11.9) is None
    store.claim_run("w", now=12)
    out = store.release_lease("r", "w", 2, outcome="failed", failure_class="transient", message="NCCL", now=13)
    assert out == {"status": "queued", "retries_used": 2, "not_before": 28}  # 20 s, capped at 15
    assert store.claim_run("w", now=27.9) is None
    store.claim_run("w", now=28)
    out = store.release_lease("r", "w", 3, outcome="failed", failure_class="transient", message="OOM again",
                              stderr_tail="Traceback…\nOutOfMemoryError", now=29)
    assert out["status"] == "failed"
    detail = store.get_run("r")
    assert "OOM again" in detail["last_error"] and "retries exhausted" in detail["last_error"]
    assert detail["attempts"][-1]["stderr_tail"].endswith("OutOfMemoryError")
    assert store.claim_run("w", now=10_000) is None


def test_permanent_failure_and_preemption(store):
    store.submit_run(run("perm"), now=0)
    store.submit_run(run("pre"), now=1)
    store.claim_run("w", now=2)
    assert store.release_lease("perm", "w", 1, outcome="failed", failure_class="permanent",
                               message="exit 78", now=3)["status"] == "failed"
    store.claim_run("w", now=4)
    assert store.release_lease("pre", "w", 1, outcome="preempted", now=5) == {
        "status": "queued", "retries_used": 0, "not_before": 5}
    assert store.claim_run("w2", now=5)["epoch"] == 2


def test_submit_errors_change_nothing(store):
    store.submit_run(run("r"), now=0)
    before = snapshot(store)
    with pytest.raises(RunExists):
        store.submit_run(run("r"), now=1)
    with pytest.raises(NotFound, match="init_from.run"):
        store.submit_run(run("child", init_from={"run": "nope"}), now=1)
    assert snapshot(store) == before


def test_cancel(store):
    store.submit_run(run("q"), now=0)
    assert store.cancel_run("q", now=1)["status"] == "cancelled"
    with pytest.raises(InvalidState):
        store.cancel_run("q", now=2)
    with pytest.raises(NotFound):
        store.cancel_run("missing", now=2)


def test_init_from_waits_for_parent_and_fails_with_it(store):
    store.submit_run(run("sft"), now=0)
    store.submit_run(run("grpo", init_from={"run": "sft"}), now=1)
    store.submit_run(run("grpo2", init_from={"run": "grpo"}), now=2)
    assert store.claim_run("w", now=3)["run_id"] == "sft"
    assert store.claim_run("w2", now=3) is None  # grpo waits for sft
    store.commit_checkpoint("sft", "w", 1, step=100, uri="u100", manifest_sha256=SHA, now=4)
    store.release_lease("sft", "w", 1, outcome="succeeded", now=5)
    grant = store.claim_run("w2", now=6)
    assert grant["run_id"] == "grpo" and grant["init_checkpoint"]["uri"] == "u100"
    store.release_lease("grpo", "w2", 1, outcome="failed", failure_class="permanent", message="bad", now=7)
    assert store.get_run("grpo2")["status"] == "failed"
    assert "init_from run grpo ended failed" in store.get_run("grpo2")["last_error"]


def test_checkpoint_commit_is_idempotent_and_latest_wins(store):
    store.submit_run(run("r"), now=0)
    store.claim_run("w", now=1)
    for step in (10, 20, 20):
        store.commit_checkpoint("r", "w", 1, step=step, uri=f"u{step}", manifest_sha256=SHA, now=2)
    assert [c["step"] for c in store.list_checkpoints("r")] == [10, 20]
    assert store.get_run("r")["latest_checkpoint"]["uri"] == "u20"


def test_events_are_recorded_in_order(store):
    store.submit_run(run("r"), now=0)
    store.claim_run("w", now=1)
    store.release_lease("r", "w", 1, outcome="succeeded", now=2)
    kinds = [e["kind"] for e in store.list_events("r")["items"]]
    assert kinds == ["submitted", "granted", "released"]
    assert store.get_run("r")["status"] == "succeeded"


def test_tokens_are_stored_hashed(store):
    token = store.create_token("w1", "worker")
    assert store.token_scope(token) == "worker"
    assert store.token_scope(token + "x") is None
    from relaytrain.commander.store.schema import tokens

    with store.engine.connect() as conn:
        stored = [r.token_hash for r in conn.execute(tokens.select())]
    assert token not in stored and len(stored) == 1


def test_workers_register_and_heartbeat(store):
    resources = {"gpus": [{"index": 0, "name": "H100", "memory_mb": 81559}], "labels": {"a": "b"},
                 "price_per_hour": 2.5}
    store.register_worker("w1", provider="local", hostname="h", version="0.1", resources=resources, now=1)
    info = store.heartbeat("w1", now=5)
    assert info["last_heartbeat"] == 5 and info["resources"]["gpus"][0]["name"] == "H100"
    with pytest.raises(NotFound):
        store.heartbeat("ghost", now=5)


def test_migrated_schema_matches_the_models(store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from relaytrain.commander.store.schema import metadata

    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_grant_offers_fallbacks_and_records_the_resume(store):
    store.submit_run(run("r"), now=0)
    store.claim_run("w1", now=1)
    for step in (10, 20, 30):
        store.commit_checkpoint("r", "w1", 1, step=step, uri=f"u{step}", manifest_sha256=SHA, now=2)
    store.release_lease("r", "w1", 1, outcome="preempted", now=3)
    grant = store.claim_run("w2", now=4)
    assert grant["checkpoint"]["step"] == 30
    assert [c["step"] for c in grant["fallback_checkpoints"]] == [20, 10]
    store.record_resume("r", "w2", 2, step=20, note="step 30: model.bin: sha256 mismatch", now=5)
    attempt = store.get_run("r")["attempts"][-1]
    assert (attempt["step_start"], attempt["resume_note"]) == (20, "step 30: model.bin: sha256 mismatch")
    with pytest.raises(LeaseLost):
        store.record_resume("r", "w1", 1, step=30, now=6)


def test_checkpoint_revisions_are_recorded_and_granted(store):
    store.submit_run(run("r"), now=0)
    store.claim_run("w1", now=1)
    for step, revision in ((10, None), (20, "c20"), (30, "c30")):
        ref = store.commit_checkpoint("r", "w1", 1, step=step, uri=f"u{step}", manifest_sha256=SHA,
                                      revision=revision, now=2)
        assert ref["revision"] == revision
    assert [c["revision"] for c in store.list_checkpoints("r")] == [None, "c20", "c30"]
    assert store.get_run("r")["latest_checkpoint"]["revision"] == "c30"
    store.release_lease("r", "w1", 1, outcome="preempted", now=3)
    grant = store.claim_run("w2", now=4)
    assert grant["checkpoint"]["revision"] == "c30"
    assert [c["revision"] for c in grant["fallback_checkpoints"]] == ["c20", None]
    store.commit_checkpoint("r", "w2", 2, step=40, uri="u40", manifest_sha256=SHA, revision="c40", now=5)
    store.commit_checkpoint("r", "w2", 2, step=40, uri="u40", manifest_sha256=SHA, revision="c40b", now=5)
    assert store.list_checkpoints("r")[-1]["revision"] == "c40b"  # a re-commit records the store's answer
    store.release_lease("r", "w2", 2, outcome="succeeded", now=6)

    store.submit_run(run("child", init_from={"run": "r"}), now=7)
    store.submit_run(parse_run_config({"run_id": "ev", "kind": "eval", "trainer": {"source_run": "r"}}), now=8)
    grants = {g["run_id"]: g for g in (store.claim_run("w3", now=9), store.claim_run("w4", now=9))}
    assert grants["child"]["init_checkpoint"]["revision"] == "c40b"
    assert [c["revision"] for c in grants["ev"]["eval_checkpoints"]] == [None, "c20", "c30", "c40b"]
    fork = store.reopen_run("r", from_step=20, now=10)["run_id"]
    assert store.list_checkpoints(fork)[0]["revision"] == "c20"  # a fork resumes the recorded commit


@pytest.mark.postgres
def test_concurrent_claim_locks_only_the_run_it_takes(pg_url, monkeypatch):
    """While one claim is inside its transaction, a second claim still gets the other queued run
    (before the fix, the first claim held locks on its whole batch of candidates, and the second
    skipped them all and answered empty)."""
    import threading

    from relaytrain.commander.store import Store, events

    store = Store(pg_url)
    store.upgrade()
    try:
        store.submit_run(run("first"), now=1)
        store.submit_run(run("second"), now=2)
        inside, finish = threading.Event(), threading.Event()
        event = events.add

        def pausing_event(conn, run_id, kind, *args):  # pause claimer A's transaction at its grant
            event(conn, run_id, kind, *args)
            if kind == "granted" and threading.current_thread().name == "claimer-a":
                inside.set()
                assert finish.wait(30), "the test never let claimer A finish"

        monkeypatch.setattr(events, "add", pausing_event)
        grants: dict[str, object] = {}
        a = threading.Thread(target=lambda: grants.update(a=store.claim_run("a", now=10)), name="claimer-a")
        a.start()
        try:
            assert inside.wait(30), "claimer A never reached its grant"
            grants["b"] = store.claim_run("b", now=10)  # A's transaction is still open
        finally:
            finish.set()
            a.join(30)
        assert grants["a"]["run_id"] == "first"
        assert grants["b"] is not None and grants["b"]["run_id"] == "second"
        assert store.claim_run("c", now=10) is None
    finally:
        store.close()
