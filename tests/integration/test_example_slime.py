"""examples/trainers/slime/relay_slime.py as a real process around a stand-in for slime's
train.py (tests/support/fake_slime.py): saves become verified checkpoints and perf lines
progress, a resume continues where the checkpoint says, the stop file ends it with 0, and
slime's crashes come out as the contract's exit codes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relaytrain.checkpoint import list_checkpoints, verify
from relaytrain.contract import Event, Progress, parse_line
from tests.support.commander import wait_until

ROOT = Path(__file__).resolve().parents[2]
WRAPPER = ROOT / "examples" / "trainers" / "slime" / "relay_slime.py"


def launch(tmp_path: Path, *, max_steps: int = 6, every: int = 2, resume: Path | None = None,
           slime_args: tuple[str, ...] = (), **env: str) -> subprocess.Popen[str]:
    slime_dir = tmp_path / "slime"
    slime_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "tests" / "support" / "fake_slime.py", slime_dir / "train.py")
    run_root = tmp_path / "run"
    variables = {**os.environ, "RELAY_OUTPUT_DIR": str(run_root / "checkpoints"), "RELAY_RUN_ROOT": str(run_root),
                 "RELAY_MAX_STEPS": str(max_steps), "RELAY_CHECKPOINT_EVERY": str(every), "RELAY_EPOCH": "2",
                 "RELAY_PROGRESS_FILE": str(run_root / "progress.jsonl"), "RELAY_STOP_FILE": str(run_root / "STOP"),
                 "RELAY_RESUME_FROM": str(resume or ""), **env}
    return subprocess.Popen([sys.executable, str(WRAPPER), "--slime-dir", str(slime_dir), "--stop-timeout-s", "5",
                             "--", "--lr", "1e-6", *slime_args], env=variables, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def lines(tmp_path: Path) -> list[Progress | Event]:
    path = tmp_path / "run" / "progress.jsonl"
    return [parse_line(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_saves_become_checkpoints_and_a_resume_continues_from_one(tmp_path):
    process = launch(tmp_path, max_steps=4)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-3000:]
    out = tmp_path / "run" / "checkpoints"
    steps = list_checkpoints(out)  # the newest complete save at each look (once a second): 4 at least
    assert steps[-1] == 4 and set(steps) <= {2, 4}
    assert all(verify(out / f"step_{step:08d}").ok for step in steps)
    assert (out / "step_00000004" / "iter_0000003" / "weights.distcp").read_text() == "weights after rollout 3"
    recorded = lines(tmp_path)
    assert [r.checkpoint[0] for r in recorded if isinstance(r, Event)] == steps
    assert [r.step for r in recorded if isinstance(r, Progress)] == [1, 2, 3, 4]
    assert next(r for r in recorded if isinstance(r, Progress) and r.step == 4).metrics == {
        "rollout/raw_reward": 0.3, "perf/step_time": 1.5}

    resumed = launch(tmp_path / "again", max_steps=6, resume=out / "step_00000004")
    _, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err[-3000:]
    assert "rollouts 4..5" in err and "--load" in err
    assert [r.step for r in lines(tmp_path / "again") if isinstance(r, Progress)] == [5, 6]
    assert list_checkpoints(tmp_path / "again" / "run" / "checkpoints")[-1] == 6


def test_the_stop_file_stops_slime_and_exits_zero(tmp_path):
    process = launch(tmp_path, max_steps=100_000, every=3, FAKE_SLIME_STEP_S="0.05")
    wait_until(lambda: any(isinstance(r, Event) for r in lines(tmp_path)), 30, "a first checkpoint")
    (tmp_path / "run" / "STOP").touch()
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0 and "stopping slime (stop file)" in err, err[-3000:]
    assert list_checkpoints(tmp_path / "run" / "checkpoints")


@pytest.mark.parametrize(("text", "code"), [
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", 75),
    ("ModuleNotFoundError: No module named 'megatron'", 78),
])
def test_slime_crashes_map_to_the_contracts_codes(tmp_path, text, code):
    process = launch(tmp_path, FAKE_SLIME_FAIL_AT="3", FAKE_SLIME_FAIL_TEXT=text)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err[-3000:]
    assert list_checkpoints(tmp_path / "run" / "checkpoints") == [2]


def test_a_flag_the_wrapper_owns_is_a_configuration_error(tmp_path):
    process = launch(tmp_path, slime_args=("--save", "/elsewhere"))
    _, err = process.communicate(timeout=60)
    assert process.returncode == 78 and "slime argument --save: set by relay_slime" in err
