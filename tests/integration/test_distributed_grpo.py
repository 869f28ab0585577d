"""GRPO on 2 DDP ranks (torchrun, gloo, CPU) against one process: the prompts split among the ranks,
the same completions (sampling is seeded per completion), rewards and loss.

Rewards are equal (the same completions, scored by the same function). Loss, KL and grad norm
agree to float tolerance (relative 1e-4, absolute 1e-7 for a loss near 0; measured ≤ 1e-7
relative on the grad norm): the two ranks' gradients are summed by an all-reduce where one
process sums all rows in one pass. Weights after 4 steps: absolute 5e-5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.support.distributed import (  # noqa: E402
    checkpoint_at,
    dist_config,
    final_weights,
    progress,
    run_ranks,
)
from tests.support.grpo import reward_file  # noqa: E402

STEPS = 4
WEIGHT_ATOL = 5e-5


def grpo(reward: str, strategy: str | None, nproc: int, **trainer: Any) -> dict[str, Any]:
    settings = {"prompts_per_step": 4, "num_generations": 3, "max_new_tokens": 6, "rewards": [{"name": reward}],
                "seed": 3, "beta": 0.04, **trainer}
    return dist_config("grpo", strategy=strategy, nproc=nproc, max_steps=STEPS, trainer=settings)


def test_grpo_on_two_ddp_ranks_samples_scores_and_learns_as_one_process(tmp_path: Path) -> None:
    reward = reward_file(tmp_path)
    for name, strategy, nproc in (("single", None, 1), ("ddp", "ddp", 2)):
        done = run_ranks(tmp_path / name, grpo(reward, strategy, nproc), nproc=nproc)
        assert done.returncode == 0, done.stderr[-4000:]
    one, two = ([line for line in progress(tmp_path / name) if "metrics" in line] for name in ("single", "ddp"))
    assert [line["step"] for line in two] == list(range(1, STEPS + 1))  # rank 0 alone reports
    for a, b in zip(one, two, strict=True):
        m, n = a["metrics"], b["metrics"]
        assert m["reward_mean"] == n["reward_mean"] and m["reward_std"] == n["reward_std"]
        for key in ("loss", "kl", "grad_norm", "clip_fraction"):
            assert n[key] == pytest.approx(m[key], rel=1e-4, abs=1e-7), (a["step"], key)
    single, ddp = (final_weights(checkpoint_at(tmp_path / name, STEPS)) for name in ("single", "ddp"))
    assert max(float((single[k] - ddp[k]).abs().max()) for k in single) <= WEIGHT_ATOL


@pytest.mark.parametrize(("strategy", "trainer", "message"), [
    ("fsdp", {}, "trainer.distributed.strategy: 'fsdp' is not supported for GRPO yet"),
    ("ddp", {"prompts_per_step": 3}, "trainer.prompts_per_step: 3 is not divisible by the 2 ranks"),
])
def test_what_grpo_cannot_do_on_two_ranks_is_a_config_error(tmp_path: Path, strategy: str, trainer: dict[str, Any],
                                                           message: str) -> None:
    done = run_ranks(tmp_path, grpo(reward_file(tmp_path), strategy, 2, **trainer), nproc=2)
    assert done.returncode != 0
    assert message in done.stderr and "exit 78" in done.stderr
