"""report_to: TensorBoard, W&B and MLflow see one experiment per run, each step once, across resumes
and a kill -9 hand-off between two workers; read back with each tracker's own reader."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.commander import wait_until
from tests.support.trackers import (
    mlflow_series,
    steps_unique_and_increasing,
    tensorboard_series,
    wandb_runs,
    wandb_series,
)

pytest.importorskip("transformers")
for _package in ("tensorboard", "wandb", "mlflow"):
    pytest.importorskip(_package, reason="pip install -e '.[all,dev]' installs the trackers and their readers")
pytestmark = pytest.mark.slow

TRACKERS = "tensorboard,wandb,mlflow"
USER_SETTINGS = ("WANDB_MODE", "WANDB_PROJECT", "WANDB_DIR", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")


@pytest.fixture(autouse=True)
def _default_tracker_settings(monkeypatch):
    """The defaults under test: W&B offline, MLflow in the run's own SQLite file."""
    for name in USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)


def train(output_dir: Path, max_steps: int, *extra: str, env: dict[str, str] | None = None,
          ) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "relaytrain.train", "sft", "--max-steps", str(max_steps), "--output-dir",
            str(output_dir), "--checkpoint-every", "10", "--batch-size", "8", "--run-id", "tracked", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    return subprocess.run(argv, capture_output=True, text=True, timeout=240, env=env)


def series_of(tracking: Path, run_id: str) -> dict[str, dict]:
    return {"tensorboard": tensorboard_series(tracking / "tensorboard"),
            "wandb": wandb_series(tracking, run_id),
            "mlflow": mlflow_series(tracking / "mlflow" / "mlflow.db", run_id)}


def test_a_resume_rewinds_every_tracker_to_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    first = train(out, 15, "--report-to", TRACKERS)
    assert first.returncode == 0, first.stderr
    before = series_of(out / "tracking", "tracked")
    shutil.rmtree(out / "step_00000015")  # as if step 15 never became durable: resume from 10
    second = train(out, 20, "--report-to", TRACKERS)
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stderr
    after = series_of(out / "tracking", "tracked")
    for tracker in after:
        old, new = before[tracker]["loss"], after[tracker]["loss"]
        assert old[-1][0] == 15, f"{tracker}: the first attempt logged past the checkpoint it resumes from"
        assert steps_unique_and_increasing(after[tracker]) == {}, tracker
        assert [p for p in new if p[0] <= 10] == [p for p in old if p[0] <= 10], tracker
        assert new[-1][0] == 20, tracker
    # What the second attempt logged after step 10 is its own: its event file alone says so.
    events = sorted((out / "tracking" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 2
    alone = tmp_path / "second-only"
    alone.mkdir()
    shutil.copy(events[1], alone)
    assert tensorboard_series(alone)["loss"] == [p for p in after["tensorboard"]["loss"] if p[0] > 10]
    runs = wandb_runs(out / "tracking", "tracked")
    assert [r["branch_step"] for r in runs] == [None, 10]  # W&B's rewind, applied when synced


def test_grpo_reports_to_every_tracker_and_resumes_them(tmp_path):
    out = tmp_path / "grpo"
    argv = [sys.executable, "-m", "relaytrain.train", "grpo", "--output-dir", str(out), "--checkpoint-every", "2",
            "--prompts-per-step", "2", "--num-generations", "2", "--run-id", "tracked-grpo", "--report-to", TRACKERS]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    first = subprocess.run([*argv, "--max-steps", "3"], capture_output=True, text=True, timeout=240, env=env)
    assert first.returncode == 0, first.stderr
    shutil.rmtree(out / "step_00000003")  # resume from step 2: step 3 is logged again
    second = subprocess.run([*argv, "--max-steps", "4"], capture_output=True, text=True, timeout=240, env=env)
    assert second.returncode == 0, second.stderr
    for tracker, series in series_of(out / "tracking", "tracked-grpo").items():
        for metric in ("reward_mean", "loss", "kl", "perf/throughput"):
            assert [s for s, _ in series[metric]] == [1, 2, 3, 4], (tracker, metric)
    assert [r["branch_step"] for r in wandb_runs(out / "tracking", "tracked-grpo")] == [None, 2]


def test_a_tracker_that_is_not_installed_is_a_permanent_error_naming_it(tmp_path):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "wandb.py").write_text("raise ImportError('No module named wandb (hidden by this test)')\n")
    result = train(tmp_path / "run", 5, "--report-to", "wandb", env={"PYTHONPATH": str(shadow)})
    assert result.returncode == 78, result.stderr
    assert "report_to: wandb needs the package wandb, which is not installed" in result.stderr
    assert not list((tmp_path / "run").glob("step_*"))


def test_trackers_continue_one_experiment_across_a_kill_9_hand_off(cluster):
    steps = 80
    cluster.client.submit({
        "run_id": "tracked-relay", "kind": "sft", "model": "tiny", "data": {"builtin": "arithmetic"},
        "max_steps": steps, "checkpoint": {"every_steps": 10, "keep_last": 10},
        "trainer": {"batch_size": 8}, "report_to": ["tensorboard", "wandb", "mlflow"],
        "lease": {"ttl_s": 3, "margin_s": 1.5, "grace_s": 1}, "store": str(cluster.store),
    })
    cluster.worker("a")
    cluster.worker("b")
    stored = cluster.store / "tracked-relay" / "files" / "tracking"
    # W&B writes its run file every second: wait until the stored copy holds some steps (what a
    # killed machine had not written is lost to W&B; never duplicated).
    wait_until(lambda: (c := cluster.run("tracked-relay").latest_checkpoint) and c.step >= 10
               and any(r["history"] for r in wandb_runs(stored, "tracked-relay")), 180,
               "a durable step and its tracker files in the store")
    victim = cluster.holder("tracked-relay")
    victim.signal(signal.SIGKILL)
    run = cluster.wait_status("tracked-relay", ("succeeded", "failed"), timeout_s=240)
    assert run.status == "succeeded", cluster.logs()
    assert [a.worker_id != victim.worker_id for a in run.attempts] == [False, True]
    resumed_at = run.attempts[1].step_start
    assert 0 < resumed_at < steps
    heir = next(w for w in ("a", "b") if w != victim.worker_id)
    # The heir started from the files the victim stored: its own copy holds the victim's W&B run.
    heir_runs = wandb_runs(cluster.store.parent / heir / "runs" / "tracked-relay" / "tracking", "tracked-relay")
    assert [r["branch_step"] for r in heir_runs] == [None, resumed_at]
    # The store holds one experiment per tracker, every step once, from both machines.
    for tracker, series in series_of(stored, "tracked-relay").items():
        assert steps_unique_and_increasing(series) == {}, tracker
        loss_steps = [s for s, _ in series["loss"]]
        assert loss_steps[0] <= resumed_at < loss_steps[-1] == steps, (tracker, loss_steps)
