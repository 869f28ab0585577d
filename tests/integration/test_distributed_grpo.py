"""GRPO on 2 ranks (torchrun, gloo, CPU), DDP and FSDP, against one process: the prompts split among
the ranks, the same completions (sampling is seeded per completion), rewards and loss.

Rewards are equal (the same completions, scored by the same function). Loss, KL and grad norm
agree to float tolerance (relative 1e-4, absolute 1e-7 for a loss near 0; measured ≤ 3e-7
relative on the grad norm): the two ranks' gradients are summed by an all-reduce (DDP) or
averaged by FSDP2's reduce-scatter of N × the loss where one process sums all rows in one pass.
Weights after 4 steps: absolute 5e-5 (the SFT tolerance).

FSDP checkpoints are sharded (``dcp/``) with the reference model gathered whole, and resume
across world sizes: an FSDP checkpoint of step 2 on one process, a one-process checkpoint of
step 2 on 2 FSDP ranks, each ending at step 4 with the uninterrupted run's rewards and, within
the tolerance, its weights. On FSDP a rank with nothing to learn still runs its forward (every
forward is a collective): against DDP, which skips it, with a reward that is constant on rank 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from relaytrain.checkpoint import read_manifest  # noqa: E402
from tests.support.distributed import (  # noqa: E402
    checkpoint_at,
    dist_config,
    final_weights,
    progress,
    run_ranks,
)
from tests.support.grpo import reward_file  # noqa: E402

STEPS = 4
RESUME_AT = 2
WEIGHT_ATOL = 5e-5
CHECKPOINTS = {"every_steps": 1, "keep_last": 1, "keep_every": RESUME_AT}

RANK_REWARD = '''
import os


def digits_on_rank_0(prompts, completions, **kwargs):
    """The share of digits on rank 0; a constant on the others, whose groups have nothing to learn."""
    if os.environ.get("RANK", "0") != "0":
        return [0.5 for _ in completions]
    return [sum(ch.isdigit() for ch in c) / len(c) if c else None for c in completions]
'''


def grpo(reward: str, strategy: str | None, nproc: int, max_steps: int = STEPS, **trainer: Any) -> dict[str, Any]:
    settings = {"prompts_per_step": 4, "num_generations": 3, "max_new_tokens": 6, "rewards": [{"name": reward}],
                "seed": 3, "beta": 0.04, **trainer}
    return dist_config("grpo", strategy=strategy, nproc=nproc, max_steps=max_steps, trainer=settings,
                       checkpoint=CHECKPOINTS)


def metric_lines(run: Path) -> list[dict[str, Any]]:
    return [line for line in progress(run) if "metrics" in line]


def assert_same_run(run: Path, reference: Path, steps: range) -> None:
    """Per step: equal rewards, loss/KL/grad norm/clip fraction within float tolerance."""
    got, want = metric_lines(run), [line for line in metric_lines(reference) if line["step"] in steps]
    assert [line["step"] for line in got] == list(steps)  # rank 0 alone reports
    for a, b in zip(want, got, strict=True):
        m, n = a["metrics"], b["metrics"]
        assert m["reward_mean"] == n["reward_mean"] and m["reward_std"] == n["reward_std"], a["step"]
        for key in ("loss", "kl", "grad_norm", "clip_fraction"):
            assert n[key] == pytest.approx(m[key], rel=1e-4, abs=1e-7), (a["step"], key)


def weight_difference(run: Path, reference: Path, step: int = STEPS) -> float:
    a, b = (final_weights(checkpoint_at(r, step)) for r in (run, reference))
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """4 GRPO steps (beta > 0: a reference model) on one process, 2 DDP and 2 FSDP ranks; a
    checkpoint every step, steps 2 and 4 kept."""
    root = tmp_path_factory.mktemp("grpo-runs")
    reward = reward_file(root)
    out = {}
    for name, strategy, nproc in (("single", None, 1), ("ddp", "ddp", 2), ("fsdp", "fsdp", 2)):
        done = run_ranks(root / name, grpo(reward, strategy, nproc), nproc=nproc)
        assert done.returncode == 0, done.stderr[-4000:]
        out[name] = root / name
    out["reward"] = Path(reward)
    return out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_grpo_on_two_ranks_samples_scores_and_learns_as_one_process(runs: dict[str, Path], strategy: str) -> None:
    assert_same_run(runs[strategy], runs["single"], range(1, STEPS + 1))
    assert weight_difference(runs[strategy], runs["single"]) <= WEIGHT_ATOL


def test_an_fsdp_grpo_checkpoint_holds_the_shards_and_the_whole_reference(runs: dict[str, Path]) -> None:
    import json

    from safetensors.torch import load_file

    folder = checkpoint_at(runs["fsdp"], STEPS)
    files = read_manifest(folder)["files"]
    assert {"dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp", "reference.safetensors"} <= set(files)
    assert "model/model.safetensors" not in files and "optimizer.pt" not in files
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["sharded"] == {"strategy": "fsdp", "world_size": 2} and state["kind"] == "grpo"
    reference, want = (load_file(checkpoint_at(run, STEPS) / "reference.safetensors")
                       for run in (runs["fsdp"], runs["single"]))
    assert sorted(reference) == sorted(want)
    assert all(bool((reference[k] == want[k]).all()) for k in want)  # the frozen initial policy, unchanged


@pytest.mark.parametrize(("source", "strategy", "nproc"), [
    ("fsdp", None, 1),      # 2 → 1: the shards into one process, the reference from its file
    ("single", "fsdp", 2),  # 1 → 2: a full checkpoint sharded on load
])
def test_grpo_resumes_across_world_sizes_like_one_uninterrupted_process(
    runs: dict[str, Path], tmp_path: Path, source: str, strategy: str | None, nproc: int
) -> None:
    config = grpo(str(runs["reward"]), strategy, nproc)
    done = run_ranks(tmp_path, config, nproc=nproc, resume_from=checkpoint_at(runs[source], RESUME_AT))
    assert done.returncode == 0, done.stderr[-4000:]
    assert [line["step"] for line in progress(tmp_path) if line.get("event") == "resumed"] == [RESUME_AT]
    assert_same_run(tmp_path, runs["single"], range(RESUME_AT + 1, STEPS + 1))
    assert weight_difference(tmp_path, runs["single"]) <= WEIGHT_ATOL


def test_an_fsdp_rank_with_nothing_to_learn_runs_its_forward_and_learns_as_ddp(tmp_path: Path) -> None:
    (tmp_path / "rank_reward.py").write_text(RANK_REWARD)
    reward = f"{tmp_path / 'rank_reward.py'}:digits_on_rank_0"
    for strategy in ("ddp", "fsdp"):  # beta 0: DDP's rank 1 skips its forward, FSDP's must not
        done = run_ranks(tmp_path / strategy, grpo(reward, strategy, 2, max_steps=2, beta=0.0), nproc=2)
        assert done.returncode == 0, done.stderr[-4000:]
    assert_same_run(tmp_path / "fsdp", tmp_path / "ddp", range(1, 3))
    assert weight_difference(tmp_path / "fsdp", tmp_path / "ddp", step=2) <= WEIGHT_ATOL


@pytest.mark.parametrize(("strategy", "trainer", "other", "message"), [
    ("ddp", {"prompts_per_step": 3}, {}, "trainer.prompts_per_step: 3 is not divisible by the 2 ranks"),
    ("fsdp", {"lora": {"r": 4}}, {}, "trainer.lora: LoRA is not supported with trainer.distributed.strategy 'fsdp'"),
    ("fsdp", {}, {"rollout": {}}, "rollout: not supported with trainer.distributed"),
])
def test_what_grpo_cannot_do_on_two_ranks_is_a_config_error(tmp_path: Path, strategy: str, trainer: dict[str, Any],
                                                           other: dict[str, Any], message: str) -> None:
    config = {**grpo(reward_file(tmp_path), strategy, 2, **trainer), **other}
    done = run_ranks(tmp_path, config, nproc=2)
    assert done.returncode != 0
    assert message in done.stderr and "exit 78" in done.stderr
