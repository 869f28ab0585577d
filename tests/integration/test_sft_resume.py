"""Exact resume of the SFT trainer across real process deaths (DESIGN §5, §6).

Each test trains one run straight to M steps, and another that is killed (SIGKILL, or SIGTERM
for a graceful stop) in a separate process after a checkpoint was committed, then resumed by a
NEW process from its newest valid checkpoint to M. The two final checkpoints must hold the
same bytes for every model tensor and every optimizer-state tensor.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from relaytrain.checkpoint import find_latest_valid, load_checkpoint  # noqa: E402

TIMEOUT_S = 120.0


def start(output_dir: Path, max_steps: int, *extra: str, dataset: str = "arithmetic") -> subprocess.Popen[bytes]:
    """The standalone trainer in a new process (its stderr in ``output_dir/stderr.log``)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "relaytrain.train", "sft", "--model", "tiny", "--dataset", dataset]
    argv += ["--max-steps", str(max_steps), "--output-dir", str(output_dir), *extra]
    stderr = (output_dir / "stderr.log").open("ab")
    # One thread: two runs share 2 cores. CPU only: bit-exact resume is a CPU guarantee.
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, env=env)


def events(output_dir: Path) -> list[dict[str, Any]]:
    path = output_dir / "progress.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen[bytes], what: str) -> None:
    """Poll ``condition`` until true; fail if the process exits first or time runs out."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the trainer exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def finish(proc: subprocess.Popen[bytes], output_dir: Path) -> None:
    code = proc.wait(timeout=TIMEOUT_S)
    assert code == 0, (output_dir / "stderr.log").read_text()[-3000:]


def checkpoint_committed(output_dir: Path) -> Callable[[], bool]:
    return lambda: any(e.get("event") == "checkpoint" for e in events(output_dir))


def digests(checkpoint: Path) -> dict[str, str]:
    """sha256 of every tensor (and repr of every other leaf) in the weights and optimizer state."""
    loaded = load_checkpoint(checkpoint)
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if hasattr(value, "numpy"):
            out[prefix] = hashlib.sha256(value.contiguous().numpy().tobytes()).hexdigest()
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                walk(f"{prefix}.{key}", value[key])
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                walk(f"{prefix}[{i}]", item)
        else:
            out[prefix] = repr(value)

    weights = [name for name in loaded if name.endswith(".safetensors")]
    assert len(weights) == 1, weights
    walk("weights", loaded[weights[0]])
    walk("optimizer", loaded["optimizer.pt"])
    walk("scheduler", loaded["scheduler.pt"])
    walk("cursor", loaded["trainer_state.json"]["cursor"])
    return out


def final_checkpoint(output_dir: Path, step: int) -> Path:
    latest = find_latest_valid(output_dir)
    assert latest.step == step and latest.path is not None
    return latest.path


def kill_and_resume(tmp_path: Path, max_steps: int, *extra: str, dataset: str = "arithmetic") -> int:
    """Run straight and killed-then-resumed runs side by side; assert they end identical.

    Returns the step the resumed process started from.
    """
    straight = start(tmp_path / "straight", max_steps, *extra, dataset=dataset)
    killed_dir = tmp_path / "killed"
    killed = start(killed_dir, max_steps, *extra, dataset=dataset)
    wait_until(checkpoint_committed(killed_dir), killed, "the first checkpoint")
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=TIMEOUT_S) == -signal.SIGKILL
    resumed = start(killed_dir, max_steps, *extra, dataset=dataset)  # --resume-from auto is the default
    finish(resumed, killed_dir)
    finish(straight, tmp_path / "straight")
    resumed_at = [e["step"] for e in events(killed_dir) if e.get("event") == "resumed"]
    assert len(resumed_at) == 1 and 0 < resumed_at[0] < max_steps
    a = digests(final_checkpoint(tmp_path / "straight", max_steps))
    b = digests(final_checkpoint(killed_dir, max_steps))
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    return resumed_at[0]


def test_full_finetune_resumes_bit_exact_across_data_epochs_after_sigkill(tmp_path: Path) -> None:
    dataset = tmp_path / "tiny.jsonl"
    dataset.write_text("".join(json.dumps({"prompt": f"{i}+{i}=", "completion": str(2 * i)}) + "\n" for i in range(11)))
    # 11 examples, 3 × 2 micro-batches per step: every checkpoint is mid data-epoch and the
    # steps after it cross many epoch boundaries (a fresh shuffle each), some inside one step.
    extra = ["--batch-size", "3", "--grad-accum", "2", "--checkpoint-every", "4", "--keep-last", "2"]
    step = kill_and_resume(tmp_path, 28, *extra, "--schedule", "cosine", "--warmup-steps", "4", dataset=str(dataset))
    assert (6 * step) % 11 != 0  # resumed mid-epoch
    final = load_checkpoint(final_checkpoint(tmp_path / "killed", 28))["trainer_state.json"]
    assert final["cursor"] == {"num_examples": 11, "seed": 0, "epoch": 15, "position": 3}


def test_lora_resumes_bit_exact_after_sigkill(tmp_path: Path) -> None:
    extra = ["--batch-size", "4", "--checkpoint-every", "5", "--keep-last", "2", "--lr", "5e-3"]
    kill_and_resume(tmp_path, 20, *extra, "--lora", "--lora-dropout", "0.1")  # dropout draws on torch's RNG


def test_sigterm_checkpoints_exits_zero_and_resumes_exact(tmp_path: Path) -> None:
    extra = ["--batch-size", "4", "--checkpoint-every", "20", "--grad-accum", "2"]
    straight = start(tmp_path / "straight", 80, *extra)
    stopped_dir = tmp_path / "stopped"
    stopped = start(stopped_dir, 80, *extra)
    wait_until(checkpoint_committed(stopped_dir), stopped, "the first checkpoint")
    stopped.send_signal(signal.SIGTERM)
    finish(stopped, stopped_dir)  # exit 0 after a checkpoint at the next step boundary
    stop_step = max(e["step"] for e in events(stopped_dir) if e.get("event") == "checkpoint")
    assert 20 <= stop_step < 80
    assert find_latest_valid(stopped_dir).step == stop_step
    assert "SIGTERM" in (stopped_dir / "stderr.log").read_text()
    resumed = start(stopped_dir, 80, *extra)
    finish(resumed, stopped_dir)
    finish(straight, tmp_path / "straight")
    assert digests(final_checkpoint(stopped_dir, 80)) == digests(final_checkpoint(tmp_path / "straight", 80))
