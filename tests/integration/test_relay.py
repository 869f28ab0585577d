"""The core promise, with real processes on loopback: a commander, `relay worker`s, and the
counter trainer. Hardware dies; the run does not."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from relaytrain.checkpoint import list_checkpoints, read_latest, verify
from tests.support.commander import wait_until
from tests.support.relay import Proxy, counter_final_state, counter_run, process_alive

pytestmark = pytest.mark.slow


def final_state(cluster, run_id: str) -> dict:
    ref = cluster.run(run_id).latest_checkpoint
    path = Path(ref.uri.removeprefix("file://"))
    assert verify(path).ok
    return json.loads((path / "state.json").read_text())


def test_kill_9_hands_the_run_to_another_worker(cluster):
    cluster.client.submit(counter_run("relay", cluster.store, max_steps=80, every=10))
    cluster.worker("a", None, "--price-per-hour", "2.5")
    cluster.worker("b", None, "--price-per-hour", "2.5")
    # Kill right after a checkpoint becomes durable, as a machine dies at a random point past one.
    wait_until(lambda: (c := cluster.run("relay").latest_checkpoint) and c.step >= 30, 60, "step 30 durable")
    victim = cluster.holder("relay")
    trainer_pids = victim.trainer_pids("relay")
    victim.signal(signal.SIGKILL)
    run = cluster.wait_status("relay", ("succeeded", "failed"))
    assert run.status == "succeeded", cluster.logs()
    assert final_state(cluster, "relay") == {"step": 80, "state": counter_final_state(80)}
    attempts = [a for a in cluster.attempts() if a["run_id"] == "relay"]
    assert [a["epoch"] for a in attempts] == [1, 2]
    assert attempts[0]["worker_id"] == victim.worker_id and attempts[0]["outcome"] == "lost"
    assert attempts[1]["worker_id"] != victim.worker_id and attempts[1]["outcome"] == "succeeded"
    assert attempts[0]["steps_lost"] <= 10
    assert attempts[1]["step_start"] >= 20 and attempts[1]["granted_at"] >= attempts[0]["ended_at"]
    assert trainer_pids and not any(process_alive(pid) for pid in trainer_pids), "the trainer outlived its worker"

    # The ledger agrees with the attempts' own timestamps.
    ledger = cluster.client.ledger("relay")
    for entry, attempt in zip(ledger.attempts, attempts, strict=True):
        wall = attempt["ended_at"] - attempt["granted_at"]
        assert entry.wall_s == pytest.approx(wall)
        assert entry.dollars == pytest.approx(wall / 3600 * 2.5)
        assert (entry.gpu_hours, entry.provider) == (0, "local")
        assert entry.steps_gained == attempt["step_end"] - attempt["step_start"]
        assert entry.steps_lost == attempt["steps_lost"]
    failover = ledger.attempts[0].failover_s
    assert attempts[1]["granted_at"] - attempts[0]["ended_at"] <= failover
    assert failover <= attempts[1]["ended_at"] - attempts[0]["granted_at"]
    total = ledger.total
    assert total.wall_s == pytest.approx(sum(a["ended_at"] - a["granted_at"] for a in attempts))
    assert 0 < total.ettr <= 1 and total.failover_s == [failover]
    assert list(ledger.providers) == ["local"]


def test_sigterm_is_a_graceful_preemption(cluster):
    cluster.client.submit(counter_run("graceful", cluster.store, max_steps=80, every=50))
    first = cluster.worker("first")
    cluster.wait_step("graceful", 15)
    first.signal(signal.SIGTERM)
    assert first.proc.wait(timeout=30) == 0
    run = cluster.run("graceful")
    attempt = run.attempts[0]
    assert (attempt.outcome, run.status, run.retries_used) == ("preempted", "queued", 0)
    assert attempt.steps_lost == 0
    assert run.latest_checkpoint.step == attempt.step_end  # checkpointed on the way out, not at 50
    cluster.worker("second")
    assert cluster.wait_status("graceful", ("succeeded", "failed")).status == "succeeded"
    assert final_state(cluster, "graceful") == {"step": 80, "state": counter_final_state(80)}


def test_partitioned_holder_fences_itself_and_is_refused_after(cluster):
    proxy = Proxy(cluster.commander.port)
    cluster.client.submit(counter_run("split", cluster.store, max_steps=150, every=10))
    isolated = cluster.worker("isolated", proxy.url)
    cluster.wait_step("split", 10)
    proxy.cut()
    cluster.worker("healthy")
    wait_until(lambda: cluster.run("split").epoch == 2, 60, "the run to be granted again after expiry")
    progress = isolated.workdir / "runs" / "split" / "progress" / "attempt_1.jsonl"
    last_trained = progress.stat().st_mtime
    proxy.restore()
    run = cluster.wait_status("split", ("succeeded", "failed"), timeout_s=120)
    assert run.status == "succeeded", cluster.logs()
    first, second = [a for a in cluster.attempts() if a["run_id"] == "split"]
    lease_end = first["last_renewed_at"] + 3  # ttl_s
    assert last_trained < lease_end, "the isolated trainer kept training past its lease"
    assert second["granted_at"] >= lease_end and first["outcome"] == "lost"
    # A write already in flight when the link went down may land while the lease still holds;
    # none may land once it has ended.
    late = [c for c in cluster.client.checkpoints("split").items if c.epoch == 1 and c.created_at >= lease_end]
    assert late == [], "a write of the fenced holder was accepted after its lease ended"
    assert final_state(cluster, "split") == {"step": 150, "state": counter_final_state(150)}
    wait_until(lambda: "refused" in isolated.log() or "self-fenced" in isolated.log(), 30,
               "the isolated worker to notice")
    proxy.close()


def _corrupt(path: Path, how: str) -> None:
    if how == "flipped":
        target = path / "state.json"
        data = bytearray(target.read_bytes())
        data[5] ^= 0x01
        target.write_bytes(bytes(data))
    elif how == "truncated":
        target = path / "notes.txt"
        target.write_bytes(target.read_bytes()[:3])
    else:
        (path / "manifest.json").unlink()


@pytest.mark.parametrize("how", ["flipped", "truncated", "no-manifest"])
def test_corrupt_newest_checkpoint_falls_back(cluster, how):
    cluster.client.submit(counter_run("corrupt", cluster.store, max_steps=100, every=10))
    first = cluster.worker("first", None, "--max-runs", "1")
    cluster.wait_step("corrupt", 25)
    first.signal(signal.SIGTERM)
    first.proc.wait(timeout=30)
    newest = cluster.run("corrupt").latest_checkpoint
    _corrupt(Path(newest.uri.removeprefix("file://")), how)  # in the store: the next worker has no local copy
    cluster.worker("second")
    assert cluster.wait_status("corrupt", ("succeeded", "failed")).status == "succeeded", cluster.logs()
    resumed = cluster.run("corrupt").attempts[1]
    assert resumed.step_start < newest.step
    assert f"step {newest.step}" in resumed.resume_note
    assert cluster.run("corrupt").attempts[0].outcome == "preempted"
    assert final_state(cluster, "corrupt") == {"step": 100, "state": counter_final_state(100)}


def test_crash_mid_save_leaves_no_partial_checkpoint(cluster):
    config = counter_run("crashy", cluster.store, max_steps=40, every=10, env={"COUNTER_CRASH_IN_SAVE_AT": "20"})
    config["retry"] = {"max_retries": 0, "backoff_base_s": 0.1, "backoff_cap_s": 0.1}
    cluster.client.submit(config)
    w = cluster.worker("w")
    run = cluster.wait_status("crashy", ("failed",))
    local = w.workdir / "runs" / "crashy" / "checkpoints"
    assert list_checkpoints(local) == [10]
    assert read_latest(local) == "step_00000010" and verify(local / "step_00000010").ok
    assert run.latest_checkpoint.step == 10
    assert "SIGKILL" in run.attempts[0].message


def test_hung_trainer_is_killed_and_retried(cluster):
    config = counter_run("hung", cluster.store, max_steps=40, env={"COUNTER_HANG_AT": "5"}, hang_timeout_s=2)
    config["retry"] = {"max_retries": 1, "backoff_base_s": 0.1, "backoff_cap_s": 0.1}
    cluster.client.submit(config)
    cluster.worker("w")
    run = cluster.wait_status("hung", ("failed",))
    assert [(a.outcome, a.failure_class) for a in run.attempts] == [("failed", "transient")] * 2
    assert all(a.message.startswith("hung: no progress") for a in run.attempts)
    assert "retries exhausted" in run.last_error


def test_exit_78_fails_the_run_without_retry(cluster):
    from tests.integration.test_cli import relay

    cluster.client.submit(counter_run("broken", cluster.store, env={"COUNTER_FAIL_AT": "3:78"}))
    cluster.worker("w")
    run = cluster.wait_status("broken", ("failed",))
    assert len(run.attempts) == 1 and run.attempts[0].failure_class == "permanent"
    shown = relay("status", "broken", commander=cluster.commander).stdout
    assert "simulated failure at step 3" in shown and "permanent" in shown
    logs = relay("logs", "broken", commander=cluster.commander).stdout
    assert "RuntimeError: simulated failure at step 3" in logs


def test_cancel_stops_the_holder(cluster):
    cluster.client.submit(counter_run("doomed", cluster.store, max_steps=10_000, step_s=0.02))
    w = cluster.worker("w")
    cluster.wait_step("doomed", 5)
    cluster.client.cancel("doomed")
    run = cluster.wait_status("doomed", ("cancelled",))
    assert run.attempts[0].outcome == "cancelled" and run.step < 10_000, (run.attempts[0], cluster.logs())
    pids = w.trainer_pids("doomed")
    wait_until(lambda: not any(process_alive(p) for p in pids), 10, "the trainer to exit")


def test_trajectories_leave_with_the_checkpoints_across_a_kill(cluster):
    """``trajectories.save``: every step's trajectory, named by the run file's pattern, reaches the
    store — those of the killed machine before its checkpoint is durable, the rest from its heir."""
    config = counter_run("audited", cluster.store, max_steps=40, every=10,
                         trajectories={"save": True, "subdir": "audit", "pattern": "traj_{rollout_id:05d}.jsonl"})
    cluster.client.submit(config)
    victim = cluster.worker("victim")
    wait_until(lambda: (c := cluster.client.run("audited").latest_checkpoint) is not None and c.step >= 10, 60,
               "the first durable checkpoint")
    victim.signal(signal.SIGKILL)  # the moment the commander knows it durable
    stored = cluster.store / "audited" / "files" / "audit"
    durable = cluster.client.run("audited").latest_checkpoint.step
    assert {f"traj_{step:05d}.jsonl" for step in range(1, durable + 1)} <= {p.name for p in stored.iterdir()}
    cluster.worker("heir")
    cluster.wait_status("audited", ("succeeded",), timeout_s=120)
    names = sorted(p.name for p in stored.iterdir() if p.name != ".index.json")
    assert names == [f"traj_{step:05d}.jsonl" for step in range(1, 41)]
    assert sorted(json.loads((stored / ".index.json").read_text())["files"]) == names  # both machines' files
    assert json.loads((stored / "traj_00040.jsonl").read_text())["state"] == counter_final_state(40)
