"""GRPO test helpers: a reward module the untrained tiny model has variance on, a small config,
digests of a checkpoint's state, and the trainer's entry point in a fresh process."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from relaytrain.config import GRPORun
from relaytrain.contract import ExitCode

REWARDS_SOURCE = '''
from pathlib import Path

STOP_FILE = {stop_file!r}
STOP_AFTER_CALLS = {stop_after}
calls = 0


def digit_share(prompts, completions, **kwargs):
    """The share of digits in the completion: a reward the untrained tiny model has variance on."""
    global calls
    calls += 1
    if STOP_FILE and calls == STOP_AFTER_CALLS:
        Path(STOP_FILE).touch()  # a preemption notice arriving during this step
    return [sum(ch.isdigit() for ch in c) / len(c) if c else None for c in completions]
'''


def reward_file(folder: Path, stop_file: Path | None = None, stop_after: int = 0) -> str:
    """Write the test reward module into ``folder``; return its ``path.py:function`` name."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"test_rewards_{stop_after}.py"
    path.write_text(REWARDS_SOURCE.format(stop_file=str(stop_file or ""), stop_after=stop_after))
    return f"{path}:digit_share"


def grpo_config(reward: str, **trainer: Any) -> GRPORun:
    settings: dict[str, Any] = dict(
        prompts_per_step=4, num_generations=3, max_new_tokens=6, rewards=[{"name": reward}], seed=3
    )
    settings.update(trainer)
    return GRPORun(run_id="grpo-test", kind="grpo", max_steps=4, checkpoint={"every_steps": 2}, trainer=settings)


def progress(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def state_digests(checkpoint: Path) -> dict[str, str]:
    """sha256 of every tensor of the model, reference and optimizer state, and the scalars beside them."""
    from safetensors.torch import load_file

    digests: dict[str, str] = {}

    def add(name: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            digests[name] = hashlib.sha256(data).hexdigest()
        else:
            digests[name] = repr(value)

    for file in ("model/model.safetensors", "model/adapter_model.safetensors", "reference.safetensors"):
        if (checkpoint / file).exists():
            for key, tensor in load_file(str(checkpoint / file)).items():
                add(f"{file}:{key}", tensor)
    optimizer = torch.load(checkpoint / "optimizer.pt")
    for pid, slots in optimizer["state"].items():
        for key, value in slots.items():
            add(f"optimizer:{pid}:{key}", value)
    add("optimizer:param_groups", optimizer["param_groups"])
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    add("trainer_state", {k: state[k] for k in ("step", "cursor", "sampler", "rng", "tokens_generated")})
    return digests


def launch(config: GRPORun, root: Path, max_steps: int, resume: Path | None = None,
           env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start the worker's trainer entry in a fresh process, under the environment contract."""
    root.mkdir(parents=True, exist_ok=True)
    config_file = root / f"run-{max_steps}.json"
    config_file.write_text(json.dumps(config.model_dump(mode="json")))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "RELAY_RUN_CONFIG": str(config_file),
        "RELAY_RUN_ID": config.run_id,
        "RELAY_OUTPUT_DIR": str(root / "checkpoints"),
        "RELAY_MAX_STEPS": str(max_steps),
        "RELAY_RESUME_FROM": str(resume or ""),
        "RELAY_PROGRESS_FILE": str(root / "progress.jsonl"),
        "RELAY_STOP_FILE": str(root / "STOP"),
        "RELAY_ROLLOUT_TRAJECTORY_ROOT": str(root / "rollouts"),
        **(env or {}),
    }
    return subprocess.Popen([sys.executable, "-m", "relaytrain.train.run"], env=env, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str]) -> None:
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == ExitCode.OK, stderr[-3000:]
