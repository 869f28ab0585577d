"""SFT on 2 ranks (torchrun, gloo, CPU, one thread a rank) against one process, with the same global batch.

The ranks split each micro-batch (rows ``r::2``), so what differs from one process is only
floating-point order: the all-reduce sums two partial gradients where one process sums all rows
at once, and each rank pads its rows to its own longest one (matmul shapes differ, the padded
positions are masked). Hence tolerances, not bit-equality:

- losses per step: relative ``LOSS_RTOL`` = 1e-5 (measured: at most 3e-7);
- weights after 20 steps: absolute ``WEIGHT_ATOL`` = 5e-5 (measured: 6.4e-6; AdamW divides by
  sqrt(v), which turns a 1e-7 gradient difference into up to ~1 % of one lr-sized update);
- target tokens per step: equal.

Checkpoints cross world sizes and strategies: an FSDP (DCP, sharded) checkpoint of step 10
resumes on one process and on DDP, a single-format one on FSDP, and each ends at step 20 within
``WEIGHT_ATOL`` of the uninterrupted one-process run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from relaytrain.checkpoint import read_manifest  # noqa: E402
from relaytrain.contract import ExitCode  # noqa: E402
from tests.support.distributed import (  # noqa: E402
    checkpoint_at,
    dist_config,
    final_weights,
    progress,
    run_ranks,
    step_metrics,
)

LOSS_RTOL = 1e-5
WEIGHT_ATOL = 5e-5
STEPS = 20


def max_weight_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def assert_losses_match(run: Path, reference: Path, steps: range) -> None:
    got, want = step_metrics(run, "loss"), step_metrics(reference, "loss")
    assert sorted(got) == list(steps)
    for step in steps:
        assert got[step] == pytest.approx(want[step], rel=LOSS_RTOL), f"step {step}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """20 steps of the tiny model on one process, on 2 DDP ranks and on 2 FSDP ranks (a
    checkpoint and a progress line every step; steps 10 and 20 kept)."""
    root = tmp_path_factory.mktemp("dist-sft")
    out = {}
    for name, strategy, nproc in (("single", None, 1), ("ddp", "ddp", 2), ("fsdp", "fsdp", 2)):
        done = run_ranks(root / name, dist_config(strategy=strategy, nproc=nproc, max_steps=STEPS), nproc=nproc)
        assert done.returncode == 0, done.stderr[-4000:]
        out[name] = root / name
    return out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_train_the_one_process_loss_curve_and_weights(runs: dict[str, Path], strategy: str) -> None:
    run, single = runs[strategy], runs["single"]
    assert_losses_match(run, single, range(1, STEPS + 1))
    assert step_metrics(run, "tokens_seen")[STEPS] == step_metrics(single, "tokens_seen")[STEPS]
    grads, want = step_metrics(run, "grad_norm"), step_metrics(single, "grad_norm")
    assert all(grads[s] == pytest.approx(want[s], rel=1e-4) for s in want)  # the global norm, not a rank's
    difference = max_weight_difference(final_weights(checkpoint_at(run, STEPS)),
                                       final_weights(checkpoint_at(single, STEPS)))
    assert difference <= WEIGHT_ATOL
    # Rank 0 alone reports: one progress line and one checkpoint event a step.
    lines = progress(run)
    assert [line["step"] for line in lines if "metrics" in line] == list(range(1, STEPS + 1))
    assert [line["step"] for line in lines if line.get("event") == "checkpoint"] == list(range(1, STEPS + 1))


def test_ddp_checkpoint_is_the_single_process_format(runs: dict[str, Path]) -> None:
    folder = checkpoint_at(runs["ddp"], STEPS)
    assert (folder / "model" / "model.safetensors").exists() and (folder / "optimizer.pt").exists()
    assert not (folder / "dcp").exists()
    assert "sharded" not in json.loads((folder / "trainer_state.json").read_text())


def test_fsdp_checkpoint_holds_every_ranks_shards_in_its_manifest(runs: dict[str, Path]) -> None:
    folder = checkpoint_at(runs["fsdp"], STEPS)
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["sharded"] == {"strategy": "fsdp", "world_size": 2}
    files = read_manifest(folder)["files"]
    assert {"dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp"} <= set(files)
    assert "model/config.json" in files and "scheduler.pt" in files and "trainer_state.json" in files
    assert "model/model.safetensors" not in files and "optimizer.pt" not in files
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize(("source", "strategy", "nproc"), [
    ("fsdp", None, 1),     # 2 → 1: DCP loads into one process with no process group
    ("single", "fsdp", 2),  # 1 → 2: a full checkpoint (index-keyed optimizer.pt) sharded on load
    ("fsdp", "ddp", 2),    # FSDP → DDP: DCP into replicated models
])
def test_resume_across_world_sizes_ends_like_one_uninterrupted_process(
    runs: dict[str, Path], tmp_path: Path, source: str, strategy: str | None, nproc: int
) -> None:
    config = dist_config(strategy=strategy, nproc=nproc, max_steps=STEPS)
    done = run_ranks(tmp_path, config, nproc=nproc, resume_from=checkpoint_at(runs[source], 10))
    assert done.returncode == 0, done.stderr[-4000:]
    assert [line["step"] for line in progress(tmp_path) if line.get("event") == "resumed"] == [10]
    assert_losses_match(tmp_path, runs["single"], range(11, STEPS + 1))
    state, want = (json.loads((checkpoint_at(run, STEPS) / "trainer_state.json").read_text())
                   for run in (tmp_path, runs["single"]))
    assert state["cursor"] == want["cursor"]
    difference = max_weight_difference(final_weights(checkpoint_at(tmp_path, STEPS)),
                                       final_weights(checkpoint_at(runs["single"], STEPS)))
    assert difference <= WEIGHT_ATOL


def test_a_damaged_shard_is_refused_before_anything_loads(runs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy" / "checkpoints" / "step_00000010"
    shutil.copytree(checkpoint_at(runs["fsdp"], 10), copy)
    shard = copy / "dcp" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    done = run_ranks(tmp_path / "run", dist_config(max_steps=STEPS), resume_from=copy)
    assert done.returncode != 0
    assert "dcp/__1_0.distcp" in done.stderr and "mismatch" in done.stderr


@pytest.mark.parametrize(("strategy", "trainer", "field"), [
    ("ddp", {"batch_size": 7}, "trainer.batch_size: 7 is not divisible by the 2 ranks"),
    ("fsdp", {"lora": {"r": 4}}, "trainer.lora: LoRA is not supported with trainer.distributed.strategy 'fsdp'"),
])
def test_what_two_ranks_cannot_train_is_a_config_error(tmp_path: Path, strategy: str, trainer: dict[str, Any],
                                                       field: str) -> None:
    config = dist_config(strategy=strategy, nproc=2, max_steps=2, trainer=trainer)
    done = run_ranks(tmp_path, config, nproc=2)
    assert done.returncode != 0
    assert field in done.stderr
    assert f"exit {int(ExitCode.CONFIG)}" in done.stderr
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
