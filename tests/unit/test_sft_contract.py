"""The trainer side of the environment contract (DESIGN §6) and RNG capture/restore."""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import pytest

from relaytrain.contract import Contract, ExitCode, exit_code_for
from relaytrain.errors import ConfigError


def test_from_env_reads_every_variable(tmp_path: Path) -> None:
    env = {
        "RELAY_RUN_ID": "arith",
        "RELAY_EPOCH": "4",
        "RELAY_RUN_ROOT": str(tmp_path),
        "RELAY_OUTPUT_DIR": str(tmp_path / "checkpoints"),
        "RELAY_RESUME_FROM": str(tmp_path / "checkpoints" / "step_00000010"),
        "RELAY_INIT_FROM": "",
        "RELAY_MAX_STEPS": "50",
        "RELAY_PROGRESS_FILE": str(tmp_path / "progress.jsonl"),
        "RELAY_STOP_FILE": str(tmp_path / "STOP"),
        "RELAY_ROLLOUT_TRAJECTORY_ROOT": str(tmp_path / "traj"),
        "RELAY_ROLLOUT_TRAJECTORY_PATTERN": "step_{rollout_id}.jsonl",
    }
    contract = Contract.from_env(env)
    assert contract.run_id == "arith" and contract.epoch == 4 and contract.max_steps == 50
    assert contract.resume_from == tmp_path / "checkpoints" / "step_00000010"
    assert contract.init_from is None  # empty means unset
    assert contract.rollout_trajectory_pattern == "step_{rollout_id}.jsonl"


@pytest.mark.parametrize(
    ("env", "match"),
    [({}, "RELAY_OUTPUT_DIR"), ({"RELAY_OUTPUT_DIR": "x", "RELAY_MAX_STEPS": "ten"}, "RELAY_MAX_STEPS")],
)
def test_from_env_rejects_bad_values(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Contract.from_env(env)


def test_progress_and_checkpoint_lines(tmp_path: Path) -> None:
    contract = Contract.local(tmp_path)
    contract.report_progress(3, {"loss": 1.5, "lr": 1e-3, "bad": float("nan")})
    contract.report_checkpoint(3, tmp_path / "step_00000003")
    lines = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    contract.close()
    assert lines[0] == {"step": 3, "metrics": {"loss": 1.5, "lr": 1e-3, "bad": None}}
    assert lines[1] == {"event": "checkpoint", "step": 3, "path": str((tmp_path / "step_00000003").resolve())}


def test_stop_file_and_signals(tmp_path: Path) -> None:
    contract = Contract.local(tmp_path)
    assert not contract.should_stop()
    (tmp_path / "STOP").touch()
    assert contract.should_stop() and contract.stop_reason == "stop file"

    other = Contract.local(tmp_path / "other")
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        other.install_signal_handlers()
        os.kill(os.getpid(), signal.SIGTERM)  # handled synchronously in the main thread
        assert other.should_stop() and other.stop_reason == "SIGTERM"
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def test_exit_codes() -> None:
    assert exit_code_for(ConfigError("data.path: missing")) == ExitCode.CONFIG
    assert exit_code_for(ModuleNotFoundError("rewards")) == ExitCode.CONFIG
    assert exit_code_for(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")) == ExitCode.TEMPFAIL
    assert exit_code_for(RuntimeError("NCCL watchdog timeout")) == ExitCode.TEMPFAIL
    assert exit_code_for(KeyError("x")) is None


def test_rng_capture_restore_round_trip() -> None:
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    from relaytrain.train.rng import capture_rng_state, restore_rng_state, seed_everything

    seed_everything(11)
    random.random(), np.random.rand(), torch.rand(3)
    state = json.loads(json.dumps(capture_rng_state()))  # survives trainer_state.json
    expected = (random.random(), np.random.rand(), np.random.randn(), torch.rand(5))
    random.random(), np.random.rand(10), torch.rand(100)
    restore_rng_state(state)
    got = (random.random(), np.random.rand(), np.random.randn(), torch.rand(5))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])
