"""The worker's entry (``python -m relaytrain.train.run``) and the standalone CLI, as processes.

The worker writes the run config JSON, sets the ``RELAY_*`` contract and starts the trainer;
exit codes say what happened (0 done, 78 permanent config error, 75 transient).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from relaytrain.config import parse_run_config, run_config_dict
from relaytrain.contract import ExitCode

pytest.importorskip("torch")
pytest.importorskip("transformers")


def worker_env(tmp_path: Path, config: dict[str, Any], **extra: str) -> dict[str, str]:
    config_path = tmp_path / "run.json"
    config_path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "CUDA_VISIBLE_DEVICES": "",
            "RELAY_RUN_CONFIG": str(config_path),
            "RELAY_RUN_ID": config.get("run_id", "x"),
            "RELAY_EPOCH": "3",
            "RELAY_RUN_ROOT": str(tmp_path),
            "RELAY_OUTPUT_DIR": str(tmp_path / "checkpoints"),
            "RELAY_PROGRESS_FILE": str(tmp_path / "progress.jsonl"),
            "RELAY_STOP_FILE": str(tmp_path / "STOP"),
            "RELAY_RESUME_FROM": "",
            **extra,
        }
    )
    return env


def run_worker_entry(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaytrain.train.run"], env=env, capture_output=True, text=True, timeout=120
    )


def sft_config(**overrides: Any) -> dict[str, Any]:
    config = {
        "run_id": "entry",
        "kind": "sft",
        "max_steps": 6,
        "checkpoint": {"every_steps": 4},
        "trainer": {"batch_size": 8},
    }
    config.update(overrides)
    return run_config_dict(parse_run_config(config))


def test_worker_entry_trains_resumes_and_reports(tmp_path: Path) -> None:
    env = worker_env(tmp_path, sft_config(), RELAY_MAX_STEPS="4")  # the worker's target wins
    done = run_worker_entry(env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    committed = str((tmp_path / "checkpoints" / "step_00000004").resolve())
    assert {"event": "checkpoint", "step": 4, "path": committed} in lines
    assert not (tmp_path / "checkpoints" / "step_00000006").exists()

    resume = worker_env(tmp_path, sft_config(), RELAY_RESUME_FROM=str(tmp_path / "checkpoints" / "step_00000004"))
    again = run_worker_entry(resume)
    assert again.returncode == 0, again.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert any(line.get("event") == "resumed" and line["step"] == 4 for line in lines)
    assert [line["step"] for line in lines if line.get("event") == "checkpoint"] == [4, 6]
    state = json.loads((tmp_path / "checkpoints" / "step_00000006" / "trainer_state.json").read_text())
    assert state["lease_epoch"] == 3 and state["run_id"] == "entry"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (sft_config(data={"path": "/nonexistent/train.jsonl"}), "no such file"),
        (sft_config(model="/nonexistent/model"), "no such folder"),
        ({"run_id": "bad", "kind": "sft", "max_steps": 0}, "max_steps"),
        ({"run_id": "cmd", "kind": "command", "max_steps": 1, "trainer": {"command": "true"}}, "no built-in"),
    ],
)
def test_worker_entry_exits_78_on_permanent_errors(tmp_path: Path, config: dict[str, Any], message: str) -> None:
    result = run_worker_entry(worker_env(tmp_path, config))
    assert result.returncode == ExitCode.CONFIG
    assert message in result.stderr


def test_standalone_rejects_bad_flags_with_78(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relaytrain.train", "sft", "--max-steps", "5", "--output-dir", str(tmp_path)]
        + ["--checkpoint-every", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == ExitCode.CONFIG
    assert "checkpoint.every_steps" in result.stderr
