"""Built-in runs on several ranks, as the worker starts them: configs, the environment, torchrun.

Usage::

    config = dist_config("sft", strategy="fsdp", nproc=2, max_steps=20)
    done = run_ranks(tmp_path / "a", config, nproc=2)          # 2 ranks (the launcher), gloo, 1 thread each
    assert done.returncode == 0, done.stderr[-3000:]
    losses = step_metrics(tmp_path / "a", "loss")              # {step: loss} from the progress lines
    weights = final_weights(tmp_path / "a" / "checkpoints")    # the newest checkpoint's weights, any format

``run_ranks(..., resume_from=path)`` resumes, so a hand-off across world sizes (2 ranks, then 1)
is two calls; the worker-level kill -9 hand-off builds its run file with ``dist_config`` too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from relaytrain.config import parse_run_config, run_config_dict

TIMEOUT_S = 300


def dist_config(kind: str = "sft", *, strategy: str | None = None, nproc: int = 1, max_steps: int = 20,
                **overrides: Any) -> dict[str, Any]:
    """A run config (the JSON the worker writes) of the tiny model on arithmetic; ``strategy``
    adds ``trainer.distributed`` with ``nproc`` ranks (gloo). ``trainer`` in ``overrides`` is
    merged into the defaults (batch 8, checkpoint and progress line every step)."""
    trainer: dict[str, Any] = {"batch_size": 8} if kind == "sft" else {}
    trainer.update(overrides.pop("trainer", {}))
    if strategy is not None:
        trainer["distributed"] = {"strategy": strategy, "nproc_per_node": nproc, "backend": "gloo"}
    config: dict[str, Any] = {
        "run_id": f"dist-{kind}-{strategy or 'single'}-{nproc}",
        "kind": kind,
        "max_steps": max_steps,
        "checkpoint": {"every_steps": 1, "keep_last": 1, "keep_every": 10},
        "trainer": trainer,
    }
    config.update(overrides)
    return run_config_dict(parse_run_config(config))


def rank_env(run_root: Path, config: dict[str, Any], resume_from: Path | None = None) -> dict[str, str]:
    """The ``RELAY_*`` contract of a run rooted at ``run_root``, one CPU thread, no GPU."""
    run_root.mkdir(parents=True, exist_ok=True)
    config_path = run_root / "run.json"
    config_path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update({
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONHASHSEED": "0",
        "RELAY_RUN_CONFIG": str(config_path),
        "RELAY_RUN_ID": config["run_id"],
        "RELAY_EPOCH": "1",
        "RELAY_RUN_ROOT": str(run_root),
        "RELAY_OUTPUT_DIR": str(run_root / "checkpoints"),
        "RELAY_PROGRESS_FILE": str(run_root / "progress.jsonl"),
        "RELAY_STOP_FILE": str(run_root / "STOP"),
        "RELAY_RESUME_FROM": str(resume_from or ""),
    })
    return env


def rank_argv() -> list[str]:
    """The command of a built-in run, as the worker starts it: ``python -m relaytrain.train.run``,
    which launches the ranks the config asks for itself (``train.launch``, torchrun's agent)."""
    return [sys.executable, "-m", "relaytrain.train.run"]


def run_ranks(run_root: Path, config: dict[str, Any], nproc: int = 1, resume_from: Path | None = None,
              timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Train ``config`` to its end (on the ranks its ``trainer.distributed`` asks for, ``nproc``);
    the finished process (output captured)."""
    from relaytrain.config.distributed import plan_for

    assert plan_for(parse_run_config(config)).world_size == nproc, "the config asks for another world size"
    return subprocess.run(rank_argv(), env=rank_env(run_root, config, resume_from), capture_output=True,
                          text=True, timeout=timeout)


def progress(run_root: Path) -> list[dict[str, Any]]:
    """Every line of the run's progress file."""
    path = run_root / "progress.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def step_metrics(run_root: Path, name: str) -> dict[int, float]:
    """``name`` of every progress line, by step (the last line of a step wins)."""
    return {line["step"]: float(line["metrics"][name]) for line in progress(run_root) if "metrics" in line}


def checkpoint_at(run_root: Path, step: int) -> Path:
    """The committed checkpoint of ``step``."""
    path = run_root / "checkpoints" / f"step_{step:08d}"
    assert (path / "manifest.json").exists(), f"no checkpoint of step {step} in {run_root}"
    return path


def final_weights(checkpoint: Path) -> dict[str, Any]:
    """The full weights of a checkpoint of the tiny model, single-format or sharded (loaded
    into one process, as a resume on one rank does)."""
    from relaytrain.checkpoint import load_checkpoint
    from relaytrain.train.sharded import DCP_DIR, is_shard_file, load_dcp
    from relaytrain.train.tiny import load_model_and_tokenizer

    loaded = load_checkpoint(checkpoint, verify_only=is_shard_file)
    if not loaded["trainer_state.json"].get("sharded"):
        return dict(loaded["model/model.safetensors"])
    model, _ = load_model_and_tokenizer("tiny", seed=0)
    load_dcp(model, None, checkpoint / DCP_DIR)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()
            if name in loaded_names(model)}


def loaded_names(model: Any) -> set[str]:
    """The names a full-weights file holds (tied duplicates left out)."""
    from relaytrain.train.model_io import unique_tensors

    return set(unique_tensors(model))
