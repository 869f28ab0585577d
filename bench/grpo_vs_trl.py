"""GRPO steps of relaytrain's built-in trainer against TRL's ``GRPOTrainer``, same batch shape.

Both train the same tiny Llama on the built-in arithmetic data: 8 prompts × 4 completions, at
most 8 new tokens, lr 1e-4, no KL (beta 0), fp32 on CPU, one torch thread, the same reward
(exact match of the answer). Both start from the same checkpoint: by default an SFT run of 400
steps that the benchmark trains first (``--init`` gives another; ``--init random`` the untrained
model, on which every reward is 0 and relaytrain skips the whole update, see below).

Two figures, each trainer in turn in the same process:

1. **Seconds per step**: ``--warmup`` untimed steps, then the median wall time of ``--steps``
   whole steps (sampling, scoring, forward, backward, optimizer). Ratio = relaytrain ÷ TRL
   (target ≤ 0.5).
2. **Reward after the same wall time**: each trainer trains for ``--budget-s`` seconds from the
   init; the figure is its mean training reward over its last 10 steps, the steps it made, and
   the held-out greedy exact match (200 test problems) of the model it ends with.

relaytrain skips the forward and backward passes of completions whose advantage is 0 (whole
groups all right or all wrong) since, without a KL term, they add nothing to the loss or its
gradient; the share skipped is reported. TRL computes them.

Usage::

    .venv/bin/pip install trl       # only for this benchmark
    .venv/bin/python bench/grpo_vs_trl.py --steps 30 --budget-s 60

Prints one line per measurement and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROMPTS, GENERATIONS, NEW_TOKENS, LR = 8, 4, 8, 1e-4
HELD_OUT = 200


def build_init(folder: Path, steps: int) -> str:
    """Train the tiny model with the SFT trainer for ``steps`` steps; return the checkpoint folder."""
    from relaytrain.train.standalone import main as train

    code = train(["sft", "--model", "tiny", "--dataset", "arithmetic", "--max-steps", str(steps),
                  "--output-dir", str(folder), "--checkpoint-every", str(steps), "--resume-from", "none",
                  "--log-level", "WARNING"])
    if code != 0:
        raise SystemExit(f"the SFT init run failed with exit code {code}")
    return str(folder / f"step_{steps:08d}")


def held_out_accuracy(model: Any, tokenizer: Any) -> float:
    from relaytrain.train.data import builtin_dataset
    from relaytrain.train.exact_match import evaluate_exact_match

    was_training = model.training
    model.eval()
    try:
        records = builtin_dataset("arithmetic", "test")[:HELD_OUT]
        return evaluate_exact_match(model, tokenizer, records, NEW_TOKENS).accuracy
    finally:
        model.train(was_training)


def run_relaytrain(init: str | None, stop: Callable[[int, float], bool]) -> dict[str, Any]:
    """Train with ``GRPOSession.train_step`` (the trainer's own loop body) until ``stop(steps, elapsed)``."""
    from relaytrain.config import GRPORun
    from relaytrain.contract import Contract
    from relaytrain.train.grpo import GRPOSession

    config = GRPORun(
        run_id="bench",
        kind="grpo",
        max_steps=100_000,
        trainer={
            "learning_rate": LR,
            "prompts_per_step": PROMPTS,
            "num_generations": GENERATIONS,
            "max_new_tokens": NEW_TOKENS,
        },
    )
    times: list[float] = []
    rewards: list[float] = []
    skipped = total = 0
    with tempfile.TemporaryDirectory() as tmp:
        session = GRPOSession(config, Contract.local(Path(tmp), init_from=init))
        began = time.perf_counter()
        while not stop(len(times), time.perf_counter() - began):
            started = time.perf_counter()
            rollout, metrics = session.train_step()
            times.append(time.perf_counter() - started)
            rewards.append(metrics["reward_mean"] or 0.0)
            rows = session.active_rows(rollout)
            total += rollout.mask.shape[0]
            skipped += 0 if rows is None else rollout.mask.shape[0] - rows.numel()
        accuracy = held_out_accuracy(session.model, session.tokenizer)
    return {"times": times, "rewards": rewards, "accuracy": accuracy, "skipped_share": skipped / max(total, 1)}


def run_trl(init: str | None, stop: Callable[[int, float], bool]) -> dict[str, Any]:
    """Train with TRL's ``GRPOTrainer`` until ``stop(steps, elapsed)``; step times are the intervals
    between consecutive optimizer steps."""
    import pyarrow
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from relaytrain.train.data import builtin_dataset
    from relaytrain.train.tiny import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(init or "tiny", seed=0)
    records = [{"prompt": e.prompt, "answer": e.answer} for e in builtin_dataset("arithmetic", "train")]

    def correctness(prompts: list[str], completions: list[str], answer: list[str], **_: Any) -> list[float]:
        return [1.0 if c.strip() == a.strip() else 0.0 for c, a in zip(completions, answer, strict=True)]

    stamps: list[float] = []
    rewards: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())
            control.should_training_stop = stop(len(stamps) - 1, stamps[-1] - stamps[0])

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "reward" in logs:
                rewards.append(float(logs["reward"]))

    with tempfile.TemporaryDirectory() as tmp:
        config = GRPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=PROMPTS * GENERATIONS,
            num_generations=GENERATIONS,
            max_completion_length=NEW_TOKENS,
            learning_rate=LR,
            lr_scheduler_type="constant",
            beta=0.0,
            max_steps=100_000,
            logging_steps=1,
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
        trainer.remove_callback(PrinterCallback)  # its per-step log lines, not ours to print
        trainer.train()
        accuracy = held_out_accuracy(trainer.model, tokenizer)
    times = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {"times": times, "rewards": rewards, "accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per trainer")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--budget-s", type=float, default=60.0, help="wall time of the equal-time run (0: skip)")
    parser.add_argument("--init", default=None,
                        help="a checkpoint folder to start from, or 'random' (default: train SFT --init-steps first)")
    parser.add_argument("--init-steps", type=int, default=400, help="steps of the SFT init run")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for the tiny model)")
    args = parser.parse_args()

    import torch

    from relaytrain.train.session import quiet_transformers

    torch.set_num_threads(args.threads)
    quiet_transformers()
    results: dict[str, Any] = {"prompts": PROMPTS, "generations": GENERATIONS, "max_new_tokens": NEW_TOKENS,
                               "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        if args.init == "random":
            init = None
        elif args.init:
            init = args.init
        else:
            started = time.perf_counter()
            init = build_init(Path(tmp) / "sft", args.init_steps)
            print(f"SFT init: {args.init_steps} steps in {time.perf_counter() - started:.1f} s")
        results["init"] = args.init or f"sft-{args.init_steps}"
        runners = {"relaytrain": run_relaytrain, "trl": run_trl}
        warmup, steps = args.warmup, args.steps
        for name, runner in runners.items():
            try:
                timed = runner(init, lambda n, _elapsed: n >= warmup + steps)
            except ImportError as exc:
                print(f"{name:>10}: skipped ({exc})")
                continue
            times = timed["times"][warmup : warmup + steps]
            entry = {"median_s": statistics.median(times), "mean_s": statistics.fmean(times), "steps": len(times)}
            if "skipped_share" in timed:
                entry["skipped_share"] = timed["skipped_share"]
            results[name] = entry
            extra = f", {entry['skipped_share']:.0%} of completions skipped" if "skipped_share" in entry else ""
            print(f"{name:>10}: median {entry['median_s']:.4f} s/step, mean {entry['mean_s']:.4f} s/step "
                  f"over {len(times)} steps{extra}")
        if "relaytrain" in results and "trl" in results:
            results["ratio"] = results["relaytrain"]["median_s"] / results["trl"]["median_s"]
            print(f"     ratio: {results['ratio']:.2f} (relaytrain ÷ TRL seconds per step; target ≤ 0.5)")
        if args.budget_s > 0:
            budget = args.budget_s
            for name, runner in runners.items():
                if name not in results:
                    continue
                run = runner(init, lambda _n, elapsed: elapsed >= budget)
                last = run["rewards"][-10:]
                results[name]["equal_time"] = {"budget_s": budget, "steps": len(run["times"]),
                                               "reward_last10": statistics.fmean(last) if last else None,
                                               "held_out_accuracy": run["accuracy"]}
                print(f"{name:>10}: {budget:.0f} s → {len(run['times'])} steps, mean reward of the last 10 "
                      f"{results[name]['equal_time']['reward_last10']:.3f}, held-out exact match {run['accuracy']:.1%}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
