"""One GRPO step of relaytrain's built-in trainer against TRL's ``GRPOTrainer``, same batch shape.

Both train the same tiny Llama (random, or ``--init`` a checkpoint) on the built-in arithmetic
data: 8 prompts × 4 completions, at most 8 new tokens, lr 1e-4, no KL (beta 0), fp32 on CPU,
the same reward (exact match of the answer). Each trainer runs ``--warmup`` steps, then
``--steps`` timed steps; the figure is the median wall time of a whole step (sampling, scoring,
forward, backward, optimizer). TRL is optional: without it only relaytrain is timed.

Usage::

    .venv/bin/python bench/grpo_vs_trl.py --steps 30
    PYTHONPATH=/path/with/trl .venv/bin/python bench/grpo_vs_trl.py --steps 30 --init runs/arith/step_00000700

Prints one line per trainer and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPTS, GENERATIONS, NEW_TOKENS, LR = 8, 4, 8, 1e-4


def time_relaytrain(init: str | None, warmup: int, steps: int) -> list[float]:
    """Seconds per step of ``GRPOSession.train_step`` (the trainer's own loop body)."""
    from relaytrain.config import GRPORun
    from relaytrain.train.contract import Contract
    from relaytrain.train.grpo import GRPOSession

    config = GRPORun(
        run_id="bench",
        kind="grpo",
        max_steps=warmup + steps,
        trainer={
            "learning_rate": LR,
            "prompts_per_step": PROMPTS,
            "num_generations": GENERATIONS,
            "max_new_tokens": NEW_TOKENS,
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        session = GRPOSession(config, Contract.local(Path(tmp), init_from=init))
        for _ in range(warmup):
            session.train_step()
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            session.train_step()
            times.append(time.perf_counter() - started)
    return times


def time_trl(init: str | None, warmup: int, steps: int) -> list[float]:
    """Seconds between consecutive optimizer steps of TRL's ``GRPOTrainer``."""
    import pyarrow
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from relaytrain.train.data import builtin_dataset
    from relaytrain.train.tiny import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(init or "tiny", seed=0)
    records = [{"prompt": e.prompt, "answer": e.answer} for e in builtin_dataset("arithmetic", "train")]

    def correctness(prompts: list[str], completions: list[str], answer: list[str], **_: Any) -> list[float]:
        return [1.0 if c.strip() == a.strip() else 0.0 for c, a in zip(completions, answer, strict=True)]

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        config = GRPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=PROMPTS * GENERATIONS,
            num_generations=GENERATIONS,
            max_completion_length=NEW_TOKENS,
            learning_rate=LR,
            lr_scheduler_type="constant",
            beta=0.0,
            max_steps=warmup + steps + 1,
            logging_steps=10_000,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            use_cpu=True,
            bf16=False,
            dataloader_num_workers=0,
            seed=0,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[correctness],
            args=config,
            # an explicit fingerprint: datasets' own hashing of the table breaks on some pyarrow/dill pairs
            train_dataset=Dataset(pyarrow.Table.from_pylist(records), fingerprint="relaytrain-bench"),
            processing_class=tokenizer,
            callbacks=[Clock()],
        )
        trainer.train()
    intervals = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return intervals[warmup : warmup + steps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per trainer")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--init", default=None, help="a checkpoint folder to start from (default: random tiny)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for the tiny model)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"prompts": PROMPTS, "generations": GENERATIONS, "max_new_tokens": NEW_TOKENS}
    timers = {"relaytrain": time_relaytrain, "trl": time_trl}
    for name, timer in timers.items():
        try:
            times = timer(args.init, args.warmup, args.steps)
        except ImportError as exc:
            print(f"{name:>10}: skipped ({exc})")
            continue
        median, mean = statistics.median(times), statistics.fmean(times)
        results[name] = {"median_s": median, "mean_s": mean, "steps": len(times)}
        print(f"{name:>10}: median {median:.4f} s/step, mean {mean:.4f} s/step over {len(times)} steps")
    if "relaytrain" in results and "trl" in results:
        results["speedup"] = results["trl"]["median_s"] / results["relaytrain"]["median_s"]
        print(f"   speedup: {results['speedup']:.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
