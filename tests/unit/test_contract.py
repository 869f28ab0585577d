"""The trainer contract in one place: the environment round-trips, the docs list exactly its
variables, trajectory names render and read back, one classifier serves both sides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from relaytrain.contract import (
    VARIABLES,
    Contract,
    ExitCode,
    FailureClass,
    RunLayout,
    TrainerEnv,
    check_trajectory_pattern,
    classify_exit,
    exit_code_for,
    parse_line,
    trajectory_id,
    trajectory_name,
)
from relaytrain.errors import ConfigError

DOC = Path(__file__).resolve().parents[2] / "docs" / "trainer-contract.md"


def test_the_docs_list_exactly_the_contract_variables():
    section = DOC.read_text().split("## What the worker gives you")[1].split("\n## ")[0]
    documented = set(re.findall(r"^\| `(RELAY_[A-Z_]+)`", section, re.MULTILINE))
    assert documented == set(VARIABLES)


def test_every_variable_round_trips(tmp_path):
    layout = RunLayout.in_workdir(tmp_path, "r", epoch=4, trajectory_subdir="traj")
    env = TrainerEnv(output_dir=layout.checkpoints, run_id="r", epoch=4, run_root=layout.root,
                     resume_from=layout.checkpoints / "step_00000010", init_from="org/model", max_steps=50,
                     progress_file=layout.progress, stop_file=layout.stop_file, run_config=layout.config,
                     checkpoint_every=10, save_rollout_trajectories=True, rollout_trajectory_root=layout.rollouts,
                     rollout_trajectory_pattern="r_{rollout_id:04d}.pt", eval_checkpoints=layout.eval_checkpoints,
                     log_level="DEBUG")
    written = env.to_env()
    assert set(written) == set(VARIABLES)
    assert TrainerEnv.from_env(written) == env
    contract = Contract.from_env(written)
    assert contract.trajectory_path(7) == tmp_path.resolve() / "runs" / "r" / "traj" / "r_0007.pt"


@pytest.mark.parametrize(("name", "value", "message"), [
    ("RELAY_EPOCH", "two", "RELAY_EPOCH: must be an integer"),
    ("RELAY_MAX_STEPS", "0", "RELAY_MAX_STEPS: must be ≥ 1"),
    ("RELAY_SAVE_ROLLOUT_TRAJECTORIES", "maybe", "RELAY_SAVE_ROLLOUT_TRAJECTORIES: must be 1 or 0"),
    ("RELAY_ROLLOUT_TRAJECTORY_PATTERN", "rollout_*.jsonl", "RELAY_ROLLOUT_TRAJECTORY_PATTERN: needs exactly one"),
])
def test_a_bad_variable_is_named(name, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainerEnv.from_env({"RELAY_OUTPUT_DIR": "/x", name: value})


def test_output_dir_is_required():
    with pytest.raises(ConfigError, match="RELAY_OUTPUT_DIR: required"):
        TrainerEnv.from_env({})


@pytest.mark.parametrize(("pattern", "rollout_id", "name"), [
    ("rollout_{rollout_id:08d}.jsonl", 12, "rollout_00000012.jsonl"),
    ("rollout_{rollout_id}.pt", 3, "rollout_3.pt"),
    ("{rollout_id:05}-debug.pt", 40, "00040-debug.pt"),
])
def test_trajectory_names_render_and_read_back(pattern, rollout_id, name):
    assert check_trajectory_pattern(pattern) == pattern
    assert trajectory_name(pattern, rollout_id) == name
    assert trajectory_id(pattern, name) == rollout_id
    assert trajectory_id(pattern, "other.jsonl") is None


@pytest.mark.parametrize("pattern", ["rollout_*.jsonl", "{step}.jsonl", "{rollout_id}_{step}.pt", "a/{rollout_id}.pt",
                                     "{rollout_id:s}.pt", "{rollout_id"])
def test_bad_trajectory_patterns_are_refused(pattern):
    with pytest.raises(ValueError):
        check_trajectory_pattern(pattern)


@pytest.mark.parametrize(("text", "exc", "code", "failure"), [
    ("CUDA out of memory. Tried to allocate 2 GiB", RuntimeError, ExitCode.TEMPFAIL, FailureClass.TRANSIENT),
    ("NCCL watchdog timeout", RuntimeError, ExitCode.TEMPFAIL, FailureClass.TRANSIENT),
    ("CUDNN_STATUS_INTERNAL_ERROR", RuntimeError, ExitCode.TEMPFAIL, FailureClass.TRANSIENT),
    ("shape mismatch", RuntimeError, None, FailureClass.TRANSIENT),
])
def test_one_classifier_for_both_sides(text, exc, code, failure):
    """What the trainer maps to an exit code, the worker classifies the same from the traceback."""
    assert exit_code_for(exc(text)) == code
    tail = f"Traceback (most recent call last):\n  ...\n{exc.__name__}: {text}"
    assert classify_exit(1, tail, stop_requested=False, killed_for=None).failure_class == failure


def test_permanent_errors_by_code_and_by_traceback():
    assert exit_code_for(ConfigError("data.path: missing")) == ExitCode.CONFIG
    assert exit_code_for(ModuleNotFoundError("rewards")) == ExitCode.CONFIG
    tail = "Traceback (most recent call last):\nModuleNotFoundError: No module named 'rewards'"
    assert classify_exit(1, tail, stop_requested=False, killed_for=None).failure_class == FailureClass.PERMANENT


def test_progress_lines_written_by_the_trainer_are_read_by_the_worker(tmp_path):
    contract = Contract.local(tmp_path)
    contract.report_progress(3, {"loss": 0.5, "nan": float("nan"), "note": "text", "bad\x00name": 1.0, "": 2.0})
    contract.report_checkpoint(3, tmp_path / "step_00000003")
    contract.report_event("resumed", step=0)
    contract.report_file(tmp_path / "metrics.json", "source-run", "evals/x/metrics.json")
    contract.close()
    records = [parse_line(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert records[0].step == 3 and records[0].metrics == {"loss": 0.5}
    assert records[1].checkpoint == (3, str((tmp_path / "step_00000003").resolve()))
    assert records[2].event == "resumed" and records[2].checkpoint is None and records[2].file is None
    assert records[3].file == (str((tmp_path / "metrics.json").resolve()), "source-run", "evals/x/metrics.json")
    assert parse_line("not json") is None and parse_line("[1]") is None and parse_line('{"step": -1}') is None
