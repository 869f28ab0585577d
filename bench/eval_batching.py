"""Evaluation throughput: greedy completion of held-out prompts one at a time against batched, on a CPU.

    python -m bench.eval_batching                       # tiny model, 256 prompts, batch 1 / 16 / 64, 3 rounds
    python -m bench.eval_batching --model PATH --samples 128 --batch-sizes 1,32

What ``python -m relaytrain.evaluate.score`` does for each checkpoint (``evaluate_exact_match``:
greedy, left-padded batches, fp32 on the CPU), timed for each batch size on the same prompts in
the same process, one torch thread, medians over ``--repeats`` rounds. Every batch size must give
the completions of batch size 1, or the run stops: the speed-up is only worth having if it changes
no answer. Samples/s of each batch size ÷ batch size 1's is the figure in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny, a model folder or a checkpoint")
    parser.add_argument("--samples", type=int, default=256, help="held-out arithmetic prompts")
    parser.add_argument("--batch-sizes", default="1,16,64", help="comma-separated; the first is the baseline")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; medians are reported")
    args = parser.parse_args(argv)
    sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if not sizes or min(sizes) < 1:
        parser.error(f"--batch-sizes: positive integers, got {args.batch_sizes!r}")

    import torch

    from relaytrain.train.data import builtin_dataset
    from relaytrain.train.exact_match import evaluate_exact_match
    from relaytrain.train.tiny import load_model_and_tokenizer

    torch.set_num_threads(1)
    model, tokenizer = load_model_and_tokenizer(args.model, seed=0)
    records = builtin_dataset("arithmetic", "test")[: args.samples]
    seconds: dict[int, list[float]] = {b: [] for b in sizes}
    answers: dict[int, list[str]] = {}
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        for batch in sizes:  # interleaved, so a change in the machine's load hits every size alike
            start = time.perf_counter()
            result = evaluate_exact_match(model, tokenizer, records, args.max_new_tokens, batch_size=batch)
            seconds[batch].append(time.perf_counter() - start)
            answers.setdefault(batch, result.completions)
            if result.completions != answers[sizes[0]]:
                raise SystemExit(f"batch size {batch} changed the completions: batching is not exact here")
    load_after = os.getloadavg()[0]
    base = len(records) / statistics.median(seconds[sizes[0]])
    print(f"model {args.model}; {len(records)} prompts, {args.max_new_tokens} new tokens; torch {torch.__version__}, "
          f"1 thread; {os.cpu_count()} CPUs, load average {load_before:.1f} -> {load_after:.1f}")
    print(f"{'batch':>5} {'samples/s':>10} {'÷ batch ' + str(sizes[0]):>12}   rounds (s)")
    for batch in sizes:
        rate = len(records) / statistics.median(seconds[batch])
        print(f"{batch:5d} {rate:10.1f} {rate / base:12.2f}   {' '.join(f'{s:.2f}' for s in seconds[batch])}")
    print("completions identical at every batch size: yes")


if __name__ == "__main__":
    main()
