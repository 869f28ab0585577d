"""Score models by greedy completion on a dataset's held-out split, in this process.

Usage::

    python -m relaytrain.evaluate.score --dataset arithmetic --model tiny \\
        --model relay-demo/artifacts/demo-sft/checkpoints/step_00000700 --samples 300 --json
    python -m relaytrain.evaluate.score --model CKPT --metrics exact_match,reward:correctness --out DIR
    python -m relaytrain.evaluate.score --model CKPT --device cpu --batch-size 1   # fp32, one prompt at a time

Each ``--model`` is ``tiny``, a model folder, or a relaytrain checkpoint folder (its
``model/``). Metrics: ``exact_match`` and ``reward:<name>`` (the mean of a reward function —
built-in or ``module:function`` — over the greedy completions). With ``--out`` (one model) it
writes ``metrics.json``, ``completions.jsonl`` and ``summary.json`` there (the summary names the
device, dtype and batch size used). Run it as its own process: evaluation never shares a process
with training (DESIGN §9).

Device: ``--device auto`` (the default) scores on the GPU in bfloat16 when one is visible, else
on the CPU in float32. Prompts are completed ``--batch-size`` at a time (greedy, left-padded): in
float32 the completions are those of one prompt at a time.

Public API: ``data_config``, ``held_out``, ``eval_device``, ``score_model``, ``write_results``, ``main``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relaytrain import EVAL_BATCH_SIZE
from relaytrain.checkpoint import atomic_write_text
from relaytrain.config import DataConfig, RewardSpec
from relaytrain.contract import ExitCode
from relaytrain.errors import ConfigError


def data_config(dataset: str, template: str = "generic", seed: int = 0) -> DataConfig:
    """A built-in dataset name or a file path, as a DataConfig."""
    source = {"path": dataset} if "." in dataset or "/" in dataset else {"builtin": dataset}
    return DataConfig(**source, template=template, seed=seed)


def held_out(data: DataConfig, *, samples: int | None = None, subset_frac: float | None = None) -> list[Any]:
    """The first ``samples`` records, or the first ``subset_frac`` of them, of the test split."""
    from relaytrain.train.data import load_examples

    records = load_examples(data, "test")
    if subset_frac is not None:
        records = records[: max(1, math.ceil(len(records) * subset_frac))]
    return records if samples is None else records[:samples]


DEVICES = ("auto", "cpu", "cuda")


def eval_device(requested: str = "auto") -> tuple[str, str]:
    """``(device, dtype)`` to score on: ``("cuda", "bfloat16")`` when ``requested`` is ``cuda``, or
    ``auto`` and a GPU is visible; else ``("cpu", "float32")``. ConfigError for ``cuda`` without one."""
    import torch

    if requested not in DEVICES:
        raise ConfigError(f"--device: expected one of {', '.join(DEVICES)}, got {requested!r}")
    gpu = torch.cuda.is_available()
    if requested == "cuda" and not gpu:
        raise ConfigError("--device: cuda asked, but torch sees no GPU here")
    return ("cuda", "bfloat16") if requested != "cpu" and gpu else ("cpu", "float32")


def score_model(name: str, data: DataConfig, records: Sequence[Any], metrics: Sequence[str], *,
                max_new_tokens: int = 8, seed: int = 0, device: str = "cpu", dtype: str = "float32",
                batch_size: int = EVAL_BATCH_SIZE) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics of one model and the per-record completions, its weights in ``dtype`` on ``device``,
    ``batch_size`` prompts completed together."""
    import torch

    from relaytrain.train.exact_match import evaluate_exact_match
    from relaytrain.train.rewards import load_rewards, score_completions
    from relaytrain.train.tiny import load_model_and_tokenizer

    wanted = [RewardSpec(name=m.split(":", 1)[1]) for m in metrics if m.startswith("reward:")]
    rewards = load_rewards(wanted) if wanted else []
    model, tokenizer = load_model_and_tokenizer(name, seed=seed, merge_lora=True)
    model.to(device=device, dtype=getattr(torch, dtype))
    result = evaluate_exact_match(model, tokenizer, records, max_new_tokens, template=data.template,
                                  batch_size=batch_size)
    values: dict[str, float] = {}
    if "exact_match" in metrics:
        values["exact_match"] = result.accuracy
    per_function: dict[str, list[float | None]] = {}
    if rewards:
        scores = score_completions(rewards, [r.prompt for r in records], result.completions,
                                   answer=[r.answer for r in records], reasoning=[r.reasoning for r in records],
                                   template=[data.template] * len(records))
        per_function = scores.per_function
        for reward in rewards:
            present = [v for v in per_function[reward.name] if v is not None]
            values[f"reward:{reward.name}"] = sum(present) / len(present) if present else float("nan")
    rows = []
    for i, (record, completion) in enumerate(zip(records, result.completions, strict=True)):
        row = {"index": i, "prompt": record.prompt, "answer": record.answer, "completion": completion}
        for reward_name, scores_of in per_function.items():
            row[f"reward:{reward_name}"] = scores_of[i]
        rows.append(row)
    return values, rows


def write_results(out: Path, model: str, values: dict[str, float], rows: list[dict[str, Any]],
                  wall_s: float, extra: dict[str, Any] | None = None) -> None:
    """Write ``metrics.json``, ``completions.jsonl`` and, last, ``summary.json`` into ``out``,
    each atomically (a reader sees a whole file or none)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(values, indent=1, sort_keys=True) + "\n")
    atomic_write_text(out / "completions.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    summary = {"model": model, "status": "ok", "records": len(rows), "metrics": values, "wall_s": round(wall_s, 3),
               **(extra or {})}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relaytrain.evaluate.score", description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, help="tiny, a model folder or a checkpoint")
    parser.add_argument("--dataset", default="arithmetic", help="a built-in dataset or a JSONL/Parquet file")
    parser.add_argument("--template", default="generic", choices=["generic", "r1", "deepseek", "chat"])
    parser.add_argument("--metrics", default="exact_match", help="comma-separated: exact_match, reward:NAME")
    parser.add_argument("--samples", type=int, default=None, help="score only the first N test records")
    parser.add_argument("--subset-frac", type=float, default=None, help="score this fraction of the test split")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE,
                        help=f"prompts completed together (default {EVAL_BATCH_SIZE})")
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="auto: the GPU in bfloat16 when one is visible, else the CPU in float32")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiny model and of the synthetic data")
    parser.add_argument("--out", type=Path, default=None, help="write metrics.json, completions.jsonl, summary.json")
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    args = parser.parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    bad = [m for m in metrics if m != "exact_match" and not m.startswith("reward:")]
    if bad or not metrics:
        parser.error(f"--metrics: unknown metric {bad[0] if bad else '(none)'!r}: use exact_match or reward:NAME")
    if args.out is not None and len(args.model) != 1:
        parser.error("--out takes exactly one --model")
    if args.batch_size < 1:
        parser.error(f"--batch-size: must be at least 1, got {args.batch_size}")
    import torch

    torch.set_num_threads(1)
    try:
        device, dtype = eval_device(args.device)
        data = data_config(args.dataset, args.template, args.seed)
        records = held_out(data, samples=args.samples, subset_frac=args.subset_frac)
        results = []
        for name in args.model:
            start = time.monotonic()
            values, rows = score_model(name, data, records, metrics, max_new_tokens=args.max_new_tokens,
                                       seed=args.seed, device=device, dtype=dtype, batch_size=args.batch_size)
            if args.out is not None:
                write_results(args.out, name, values, rows, time.monotonic() - start,
                              {"dataset": args.dataset, "template": args.template, "device": device,
                               "dtype": dtype, "batch_size": args.batch_size})
            accuracy = values.get("exact_match")
            results.append({"model": name, **values, "total": len(rows), "accuracy": accuracy,
                            "correct": None if accuracy is None else round(accuracy * len(rows))})
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            shown = "  ".join(f"{k} {r[k]:.3f}" for k in metrics if k in r)
            print(f"{shown}  ({r['total']} records)  {r['model']}")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
