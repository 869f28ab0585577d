"""The tiny model really learns: SFT on 2-digit addition, then greedy exact match on held-out sums.

About 45–60 s on two CPU cores (one torch thread: ≈10 steps/s at batch 64). Measured with
seeds 0–3: 70–88 % held-out exact match after 500 steps (seed 0: ≈78 %).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from relaytrain.config import SFTRun  # noqa: E402
from relaytrain.contract import Contract  # noqa: E402
from relaytrain.train.data import builtin_dataset  # noqa: E402
from relaytrain.train.exact_match import evaluate_exact_match  # noqa: E402
from relaytrain.train.sft import run_sft  # noqa: E402
from relaytrain.train.tiny import load_model_and_tokenizer  # noqa: E402


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One thread is faster on 2 shared cores, and gives the numbers measured above."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_sft_learns_arithmetic_within_500_steps(tmp_path: Path, one_thread: None) -> None:
    config = SFTRun(run_id="learn", kind="sft", max_steps=500, checkpoint={"every_steps": 500})  # lr 1e-3, batch 64
    started = time.monotonic()
    assert run_sft(config, Contract.local(tmp_path), "cpu") == 0
    trained_s = time.monotonic() - started

    model, tokenizer = load_model_and_tokenizer(str(tmp_path / "step_00000500"))  # through the checkpoint
    test = builtin_dataset("arithmetic", "test")
    result = evaluate_exact_match(model, tokenizer, test, max_new_tokens=4)
    lines = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    losses = [line["metrics"]["loss"] for line in lines if "metrics" in line]
    print(f"500 steps in {trained_s:.1f} s ({500 / trained_s:.1f} steps/s); held-out exact match {result.accuracy:.1%}")
    assert losses[-1] < losses[0] / 3
    assert result.total == len(test) == 500
    assert result.accuracy >= 0.6, list(zip([e.prompt for e in test[:10]], result.completions[:10], strict=True))
