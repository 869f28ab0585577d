"""Score models by greedy exact match on a dataset's held-out split, in this process.

Usage::

    python -m relaytrain.evaluate.score --dataset arithmetic --model tiny \\
        --model relay-demo/artifacts/demo-sft/checkpoints/step_00000700 --samples 300 --json

Each ``--model`` is ``tiny``, a model folder, or a relaytrain checkpoint folder (its
``model/``). Prints one line per model, or a JSON list with ``--json``. Run it as its own
process: evaluation never shares a process with training (DESIGN §9).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from relaytrain.config import DataConfig
from relaytrain.errors import ConfigError


def score_models(models: Sequence[str], data: DataConfig, *, samples: int | None = None,
                 max_new_tokens: int = 8, seed: int = 0) -> list[dict[str, Any]]:
    """Greedy exact match of each model on ``data``'s test split (the first ``samples`` records)."""
    from relaytrain.train.data import load_examples
    from relaytrain.train.exact_match import evaluate_exact_match
    from relaytrain.train.tiny import load_model_and_tokenizer

    records = load_examples(data, "test", size=samples)
    results = []
    for name in models:
        model, tokenizer = load_model_and_tokenizer(name, seed=seed, merge_lora=True)
        result = evaluate_exact_match(model, tokenizer, records, max_new_tokens, template=data.template)
        results.append({"model": name, "accuracy": result.accuracy, "correct": result.correct,
                        "total": result.total})
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relaytrain.evaluate.score", description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, help="tiny, a model folder or a checkpoint")
    parser.add_argument("--dataset", default="arithmetic", help="a built-in dataset or a JSONL/Parquet file")
    parser.add_argument("--template", default="generic", choices=["generic", "r1", "deepseek", "chat"])
    parser.add_argument("--samples", type=int, default=None, help="score only the first N test records")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiny model and of the synthetic data")
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    source = {"path": args.dataset} if "." in args.dataset or "/" in args.dataset else {"builtin": args.dataset}
    try:
        data = DataConfig(**source, template=args.template, seed=args.seed)
        results = score_models(args.model, data, samples=args.samples, max_new_tokens=args.max_new_tokens,
                               seed=args.seed)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 78
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            print(f"{r['accuracy']:.3f}  ({r['correct']}/{r['total']})  {r['model']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
