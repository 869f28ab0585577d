"""examples/trainers/slime/relay_slime.py, the parts that need no slime: argument building,
reading slime's save folder and log lines, exit codes, and publishing a save as a checkpoint."""

from __future__ import annotations

import importlib.util
import json
import os
import zipfile
from pathlib import Path

import pytest

from relaytrain.checkpoint import read_latest, verify
from relaytrain.contract import Contract, ExitCode, parse_line
from relaytrain.errors import ConfigError

WRAPPER = Path(__file__).resolve().parents[2] / "examples" / "trainers" / "slime" / "relay_slime.py"
_spec = importlib.util.spec_from_file_location("relay_slime", WRAPPER)
slime = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(slime)


def fake_save(save_dir: Path, iteration: int, *, state: bool = True, tracker: bool = True) -> None:
    """What a slime save of ``iteration`` leaves: Megatron's folder, the data state, the tracker."""
    folder = save_dir / f"iter_{iteration:07d}"
    (folder / "__0_0.distcp").parent.mkdir(parents=True, exist_ok=True)
    (folder / "__0_0.distcp").write_bytes(os.urandom(64))
    (folder / "common.pt").write_bytes(b"common")
    if state:
        (save_dir / "rollout").mkdir(exist_ok=True)
        with zipfile.ZipFile(slime.dataset_state(save_dir, iteration), "w") as archive:
            archive.writestr("data.pkl", b"sample_offset")
    if tracker:
        (save_dir / slime.TRACKER).write_text(str(iteration))


def test_iterations_from_a_listing_and_their_steps():
    listing = ["iter_0000009", "latest_checkpointed_iteration.txt", "rollout", "iter_0000019", "iter_19", "x"]
    assert slime.newest_iteration(listing) == 19
    assert slime.newest_iteration(["rollout"]) is None
    assert slime.parse_iteration("iter_0000007") == 7 and slime.parse_iteration("iter_7") is None
    assert slime.step_of_iteration(19) == 20  # rollout 19 saved: 20 rollouts trained


def test_argv_carries_the_contracts_flags_after_yours(tmp_path):
    argv = slime.slime_argv("py", Path("/s/train.py"), ["--lr", "1e-6", "--save-hf", "/hf/{rollout_id}"],
                            save_dir=tmp_path, max_steps=300, save_every=20, load=["--load", "/ck"],
                            trajectories="/r/rollout_{rollout_id}.pt")
    assert argv == ["py", "/s/train.py", "--lr", "1e-6", "--save-hf", "/hf/{rollout_id}", "--save", str(tmp_path),
                    "--save-interval", "20", "--num-rollout", "300", "--load", "/ck",
                    "--save-debug-rollout-data", "/r/rollout_{rollout_id}.pt"]


@pytest.mark.parametrize("arg", ["--save", "--load=/x", "--num-rollout", "--save-interval", "--ckpt-step"])
def test_argv_refuses_a_flag_the_wrapper_owns(arg):
    with pytest.raises(ConfigError, match=f"slime argument {arg.split('=')[0]}: set by relay_slime"):
        slime.slime_argv("py", Path("t.py"), ["--lr", "1", arg, "v"], save_dir=Path("s"), max_steps=1,
                         save_every=1, load=[], trajectories=None)


def test_trajectory_pattern_must_be_a_plain_field(tmp_path):
    assert slime.trajectory_template(tmp_path, "rollout_{rollout_id}.pt") == str(tmp_path / "rollout_{rollout_id}.pt")
    with pytest.raises(ConfigError, match="RELAY_ROLLOUT_TRAJECTORY_PATTERN"):
        slime.trajectory_template(tmp_path, "rollout_{rollout_id:08d}.jsonl")


def test_load_arguments_resume_init_or_none(tmp_path):
    resume, megatron, hf, other = (tmp_path / n for n in ("resume", "megatron", "hf", "other"))
    for folder in (resume, megatron, hf, other):
        folder.mkdir()
    fake_save(resume, 19)
    fake_save(megatron, 99)
    (hf / "config.json").write_text("{}")
    assert slime.load_arguments(resume, str(megatron)) == ["--load", str(resume)]  # a resume wins
    assert slime.load_arguments(None, str(megatron)) == [
        "--load", str(megatron), "--finetune", "--no-load-optim", "--no-load-rng", "--start-rollout-id", "0"]
    assert slime.load_arguments(None, str(hf)) == ["--load", str(hf)]
    assert slime.load_arguments(None, None) == []
    with pytest.raises(ConfigError, match="RELAY_RESUME_FROM: .* is not a slime checkpoint"):
        slime.load_arguments(other, None)
    with pytest.raises(ConfigError, match="RELAY_INIT_FROM: .* neither"):
        slime.load_arguments(None, str(other))


def test_a_save_counts_once_tracker_folder_and_whole_data_state_are_there(tmp_path):
    assert slime.completed_iteration(tmp_path, global_dataset=True) is None
    fake_save(tmp_path, 4, state=False)
    assert slime.completed_iteration(tmp_path, global_dataset=False) == 4
    assert slime.completed_iteration(tmp_path, global_dataset=True) is None  # data state not written yet
    (tmp_path / "rollout").mkdir()
    whole = tmp_path / "whole.zip"
    with zipfile.ZipFile(whole, "w") as archive:
        archive.writestr("data.pkl", os.urandom(4096))
    slime.dataset_state(tmp_path, 4).write_bytes(whole.read_bytes()[:-30])  # cut before its central directory
    assert slime.completed_iteration(tmp_path, global_dataset=True) is None
    slime.dataset_state(tmp_path, 4).write_bytes(whole.read_bytes())
    assert slime.completed_iteration(tmp_path, global_dataset=True) == 4
    (tmp_path / slime.TRACKER).write_text("9")  # the tracker ahead of a folder that is not there
    assert slime.completed_iteration(tmp_path, global_dataset=True) is None


def test_publish_commits_a_megatron_load_folder_and_announces_it(tmp_path):
    save, out = tmp_path / "slime", tmp_path / "checkpoints"
    save.mkdir()
    contract = Contract.local(out, epoch=3)
    fake_save(save, 9)
    fake_save(save, 19)
    path = slime.publish(save, 19, contract, global_dataset=True)
    assert path == out / "step_00000020" and verify(path).ok and read_latest(out) == "step_00000020"
    assert (path / slime.TRACKER).read_text().strip() == "19"
    assert slime.completed_iteration(path, global_dataset=True) == 19  # slime can --load it as is
    source, linked = save / "iter_0000019" / "common.pt", path / "iter_0000019" / "common.pt"
    assert os.stat(source).st_ino == os.stat(linked).st_ino  # hard links, not copies
    assert sorted(p.name for p in save.iterdir()) == ["iter_0000019", slime.TRACKER, "rollout"]
    assert [p.name for p in (save / "rollout").iterdir()] == ["global_dataset_state_dict_19.pt"]
    contract.close()
    event = parse_line((out / "progress.jsonl").read_text().splitlines()[-1])
    assert event.checkpoint == (20, str(path.resolve()))
    assert json.loads((path / "manifest.json").read_text())["epoch"] == 3


def test_metric_lines_become_progress_of_the_next_step():
    ray = ("(RolloutManager pid=4321) [2026-01-02 03:04:05] rollout_metrics.py:268 - perf 4: "
           "{'rollout/raw_reward': np.float64(0.25), 'perf/rollout_time': 31.5, 'rollout/tag': 'x', 'lr': 1e-06}")
    assert slime.metrics_line(ray) == (5, {"rollout/raw_reward": 0.25, "perf/rollout_time": 31.5, "lr": 1e-06})
    assert slime.metrics_line("eval 9: {'eval/aime': 0.4}") == (10, {"eval/aime": 0.4})
    assert slime.metrics_line("step 12: {'train/loss': 0.5}") is None  # optimizer steps, not rollouts
    assert slime.metrics_line("perf 3: {'rollout/tag': 'x'}") is None


@pytest.mark.parametrize(("code", "tail", "stopped", "expected"), [
    (0, "", False, ExitCode.OK),
    (-15, "", True, ExitCode.OK),
    (1, "Traceback\nModuleNotFoundError: No module named 'megatron'", False, ExitCode.CONFIG),
    (1, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate", False, ExitCode.TEMPFAIL),
    (-9, "", False, ExitCode.TEMPFAIL),
    (78, "", False, ExitCode.CONFIG),
    (3, "AssertionError: something else", False, 3),
])
def test_exit_codes(code, tail, stopped, expected):
    assert slime.exit_code(code, tail, stop_requested=stopped) == expected
