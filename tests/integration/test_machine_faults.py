"""A machine's fault is charged to the machine (issue 13, item 5), on a real small filesystem.

The operator's story: a worker whose workdir is a 45 MB filesystem takes a run whose checkpoints
soon fill it. Before, every save failed, the same worker took the run back until its retries were
spent, and the run failed for good. Now the attempt ends as the machine's fault (no retry spent),
the worker frees its local copies and, still short of room, reports itself degraded and claims
nothing; the run goes to the roomy worker (anti-affinity) and succeeds; ``relay status`` and
``relay workers`` show both.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from relaytrain.contract import ExitCode, FailureClass, MachineFault, classify_exit, exit_code_for
from tests.support.commander import wait_until
from tests.support.relay import COUNTER, counter_final_state, counter_run
from tests.support.smallfs import small_fs, used_mb

SMALL_MB = 45


@pytest.fixture
def sick_workdir(tmp_path):
    with small_fs(tmp_path / "sick", SMALL_MB) as path:
        yield path


def relay(cluster, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "relaytrain.cli", *args, "--commander", cluster.commander.url,
                           "--token", "admin"], capture_output=True, text=True, timeout=60,
                          env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_torch_save_on_a_full_filesystem_is_the_machines_fault(tmp_path):
    """What torch.save really raises on a full disk, read by both sides of the contract."""
    torch = pytest.importorskip("torch")
    with small_fs(tmp_path / "tiny", 1) as folder:
        with pytest.raises(RuntimeError) as raised:
            torch.save({"w": torch.zeros(1 << 19)}, folder / "x.pt")
    assert exit_code_for(raised.value) == ExitCode.TEMPFAIL
    tail = f"Traceback (most recent call last):\n  ...\nRuntimeError: {raised.value}\n"
    exit_ = classify_exit(ExitCode.TEMPFAIL, tail, stop_requested=False, killed_for=None)
    assert (exit_.failure_class, exit_.fault) == (FailureClass.MACHINE, MachineFault.DISK), str(raised.value)


def check_outcome(cluster, run_id: str, sick: str, healthy: str) -> None:
    """The run succeeded on the healthy worker without spending a retry; the sick one's attempts
    were machine faults naming the disk; the sick worker is degraded, and both show."""
    run = cluster.run(run_id)
    assert run.status == "succeeded", cluster.logs()
    assert run.retries_used == 0
    tried = [(a.worker_id, a.outcome, a.failure_class) for a in run.attempts]
    assert tried[0] == (sick, "failed", FailureClass.MACHINE), tried
    assert tried[-1] == (healthy, "succeeded", None), tried
    assert [w for w, _, _ in tried].count(sick) == 1, f"granted back to the sick worker: {tried}"
    assert run.attempts[0].message.startswith(f"disk full on worker {sick} at "), run.attempts[0].message
    assert "the checkpoint needs" in run.attempts[0].message
    info = wait_until(lambda: next((w for w in cluster.client.workers() if w.worker_id == sick
                                    and w.condition == "degraded"), None), 30, "the sick worker to be degraded")
    assert info.condition_reason.startswith(f"disk full on worker {sick} at "), info.condition_reason
    status = relay(cluster, "status", run_id)
    assert "failed (machine), not counted in retries" in status, status
    assert f"worker {sick} is degraded" in status and "disk full" in status, status
    assert "retries 0/3" in status, status
    workers = relay(cluster, "workers")
    assert "degraded" in workers and sick in workers, workers


@pytest.mark.parametrize("given", ["argv", "shell"])
def test_a_full_disk_moves_a_counter_run_to_a_roomy_worker(cluster, sick_workdir, given):
    """Each checkpoint carries 8 MB: five fit on 45 MB, the sixth does not."""
    config = counter_run("fills", cluster.store, max_steps=60, every=5, step_s=0.02, env={"COUNTER_PAD_MB": "8"})
    if given == "shell":
        config["trainer"]["command"] = f"exec {sys.executable} {COUNTER}"
    cluster.client.submit(config)
    sick = cluster.worker("sick")
    assert sick.workdir == sick_workdir
    wait_until(lambda: cluster.run("fills").holder == "sick", 60, "the sick worker to take the run")
    healthy = cluster.worker("healthy")
    cluster.wait_status("fills", ("succeeded", "failed"), timeout_s=120)
    check_outcome(cluster, "fills", "sick", "healthy")
    latest = cluster.run("fills").latest_checkpoint
    assert latest.step == 60
    assert counter_final_state(60) in (Path(latest.uri.removeprefix("file://")) / "state.json").read_text()
    assert used_mb(sick_workdir) < 8, f"the sick worker left {used_mb(sick_workdir):.1f} MB in use"
    assert healthy.proc.poll() is None and sick.proc.poll() is None


@pytest.mark.slow
def test_the_issues_sft_run_is_not_failed_by_a_full_disk(cluster, sick_workdir):
    """The issue's scenario: a tiny SFT run, keep_last 5, checkpoints of about 13 MB on a 45 MB
    workdir: three saves fit, the fourth fails inside torch.save."""
    pytest.importorskip("transformers")
    steps = 40
    cluster.client.submit({
        "run_id": "sft-full", "kind": "sft", "model": "tiny", "data": {"builtin": "arithmetic"},
        "max_steps": steps, "checkpoint": {"every_steps": 5, "keep_last": 5},
        "lease": {"ttl_s": 3, "margin_s": 1.5, "grace_s": 1}, "retry": {"max_retries": 3},
        "store": str(cluster.store),
    })
    started = time.monotonic()
    cluster.worker("sick")
    wait_until(lambda: cluster.run("sft-full").holder == "sick", 60, "the sick worker to take the run")
    cluster.worker("healthy")
    run = cluster.wait_status("sft-full", ("succeeded", "failed"), timeout_s=240)
    took = time.monotonic() - started
    check_outcome(cluster, "sft-full", "sick", "healthy")
    tried = ", ".join(f"{a.worker_id}: {a.outcome} {a.failure_class or ''} steps {a.step_start}->{a.step_end} "
                      f"lost {a.steps_lost}" for a in run.attempts)
    print(f"\nissue scenario: {len(run.attempts)} attempts ({tried}), {took:.0f}s to success, retries used "
          f"{run.retries_used}, the sick workdir {used_mb(sick_workdir):.1f} of {SMALL_MB} MB in use")
    assert run.latest_checkpoint.step == steps
    assert used_mb(sick_workdir) < 13


def test_a_disk_degraded_worker_claims_again_once_the_disk_has_room(tmp_path):
    """The recovery rule: degraded while the free space is short of the failed run's need,
    ok again at the first check after someone made room (here: another tenant's file removed)."""
    from relaytrain.contract import RunLayout
    from relaytrain.worker.machine import MB, DiskNeed, MachineHealth

    with small_fs(tmp_path / "small", 10) as workdir:
        copies = RunLayout.in_workdir(workdir, "r").checkpoints / "step_00000010"
        copies.mkdir(parents=True)
        (copies / "weights.bin").write_bytes(b"w" * (2 * MB))
        ballast = workdir / "someone-elses.bin"  # not the worker's to delete
        ballast.write_bytes(b"b" * (7 * MB))
        health = MachineHealth("w", workdir)
        health.after_fault(MachineFault.DISK, "disk full", DiskNeed(checkpoint=2 * MB, keep=3))
        assert not copies.exists(), "the local checkpoint copy was not freed"
        assert health.degraded and health.reason.startswith(f"disk full on worker w at {workdir}/runs: ")
        assert "the last run needs 6 MB here (3 checkpoints of 2 MB" in health.reason
        assert not health.recheck() and health.wire().condition == "degraded"
        ballast.unlink()
        assert health.recheck() and health.wire().model_dump() == {"condition": "ok", "reason": None}


def test_a_store_this_machine_cannot_reach_moves_the_run_and_degrades_nothing(cluster, moto, monkeypatch,
                                                                               tmp_path):
    """Two workers, one S3 store: one worker's endpoint goes nowhere (a closed port on its side:
    its network cannot reach the store), the other's is the store. The cut-off worker's uploads
    fail to connect: its machine's fault, no retry spent, and the run finishes on the other."""
    import uuid

    from tests.support.commander import free_port

    pytest.importorskip("boto3")
    for name, value in {**moto.env(), "AWS_CONFIG_FILE": str(tmp_path / "none"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(name, value)  # the workers inherit them: the standard AWS configuration
    bucket = f"relay-{uuid.uuid4().hex[:12]}"
    moto.client().create_bucket(Bucket=bucket)
    config = counter_run("cut-off", cluster.store, max_steps=30, every=5, step_s=0.02)
    config["store"] = {"uri": f"s3://{bucket}/relay"}
    cluster.client.submit(config)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    cluster.worker("cut")
    wait_until(lambda: cluster.run("cut-off").holder == "cut", 60, "the cut-off worker to take the run")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto.url)
    cluster.worker("connected")
    run = cluster.wait_status("cut-off", ("succeeded", "failed"), timeout_s=180)
    assert run.status == "succeeded" and run.retries_used == 0, cluster.logs()
    tried = [(a.worker_id, a.outcome, a.failure_class) for a in run.attempts]
    assert tried == [("cut", "failed", FailureClass.MACHINE), ("connected", "succeeded", None)], tried
    assert run.attempts[0].message.startswith("the store cannot be reached from worker cut"), run.attempts[0].message
    cut = next(w for w in cluster.client.workers() if w.worker_id == "cut")
    assert cut.condition == "ok" and cut.alive


def test_a_trainer_that_fails_silently_on_a_full_disk_is_charged_to_the_disk(tmp_path):
    """Its stderr is on the same full disk, so no ENOSPC reaches it: the free space tells."""
    from relaytrain.worker.machine import FULL_BELOW, looks_full

    with small_fs(tmp_path / "tiny", 2) as folder:
        assert not looks_full(folder, 0)
        assert looks_full(folder, 4 << 20)  # less room than one checkpoint of 4 MB
        with open(folder / "filler", "wb") as filler:
            with pytest.raises(OSError):
                while True:
                    filler.write(b"\0" * (1 << 16))
                    filler.flush()
        assert looks_full(folder, 0), f"{FULL_BELOW} bytes free at most on a full disk"
