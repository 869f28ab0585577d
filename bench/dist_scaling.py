"""Data-parallel SFT on CPU with gloo, and resume across world sizes, each against a one-process
baseline measured in the same run.

    python -m bench.dist_scaling                      # tiny model, global batch 32, 40 steps
    python -m bench.dist_scaling --batch-size 64 --steps 60 --repeats 3

| ratio                     | ours                                        | divided by                        |
|---------------------------|---------------------------------------------|-----------------------------------|
| scaling, ddp / fsdp       | samples/s of 2 ranks × 1 thread (torchrun)  | samples/s of 1 process × 1 thread |
| resume 2 → 1 (load+step)  | load an FSDP (DCP, 2-rank) checkpoint into  | the same from a 1-process         |
|                           | one process, verified, + the first step     | checkpoint of the same step       |

Samples/s come from the trainers' own progress lines (``steps_per_s`` × global batch, the first
line, warm-up, left out; one checkpoint, at the end). Load-to-first-step is measured in this
process at the trainer level (``SFTSession`` built, then ``load_checkpoint`` and one
``train_step`` timed; the worker's grant-to-first-step is measured elsewhere). Medians over
``--repeats``. A 2-core machine bounds the scaling figure (2 ranks take both cores, and gloo's
all-reduce runs on them too); the GPU check is the real figure. Needs torch and transformers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.support.distributed import checkpoint_at, dist_config, progress, run_ranks


def samples_per_s(run_root: Path, batch: int) -> float:
    rates = [line["metrics"]["steps_per_s"] for line in progress(run_root) if "metrics" in line][1:]
    if not rates:
        raise SystemExit(f"{run_root}: too few progress lines to measure; give more --steps")
    return statistics.median(rates) * batch


def train(root: Path, strategy: str | None, nproc: int, steps: int, batch: int) -> Path:
    config = dist_config(strategy=strategy, nproc=nproc, max_steps=steps, trainer={"batch_size": batch},
                         checkpoint={"every_steps": steps, "keep_last": 1})
    done = run_ranks(root, config, nproc=nproc, timeout=1800)
    if done.returncode:
        raise SystemExit(f"{strategy or 'single'} x{nproc} failed:\n{done.stderr[-3000:]}")
    return root


def load_to_first_step(checkpoint: Path, batch: int, steps: int) -> float:
    """Seconds from a built session to the end of its first step after loading ``checkpoint``."""
    import torch

    from relaytrain.config import parse_run_config
    from relaytrain.contract import Contract
    from relaytrain.train.sft import SFTSession

    torch.set_num_threads(1)
    config = parse_run_config(dist_config(max_steps=steps + 1, trainer={"batch_size": batch}))
    with tempfile.TemporaryDirectory() as out:
        session = SFTSession(config, Contract.local(out))
        started = time.perf_counter()
        session.load_checkpoint(checkpoint)
        session.train_step()
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32, help="The global batch (split between the ranks).")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rates: dict[str, list[float]] = {"single": [], "ddp": [], "fsdp": []}
    loads: dict[str, list[float]] = {"1→1": [], "2→1": []}
    with tempfile.TemporaryDirectory(prefix="relay-dist-bench-") as tmp:
        for repeat in range(args.repeats):
            runs: dict[str, Path] = {}
            for name, strategy, nproc in (("single", None, 1), ("ddp", "ddp", 2), ("fsdp", "fsdp", 2)):
                runs[name] = train(Path(tmp) / f"{name}-{repeat}", strategy, nproc, args.steps, args.batch_size)
                rates[name].append(samples_per_s(runs[name], args.batch_size))
            for name, source in (("1→1", "single"), ("2→1", "fsdp")):
                loads[name].append(load_to_first_step(checkpoint_at(runs[source], args.steps), args.batch_size,
                                                      args.steps))
    median = {k: statistics.median(v) for k, v in rates.items()}
    load = {k: statistics.median(v) for k, v in loads.items()}
    print(f"tiny model, global batch {args.batch_size}, {args.steps} steps, {args.repeats} repeat(s), "
          f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    print("| run | samples/s | ÷ 1 process |")
    print("|---|---|---|")
    for name in ("single", "ddp", "fsdp"):
        print(f"| {name} ({'1 process' if name == 'single' else '2 ranks'} × 1 thread) | {median[name]:.1f} | "
              f"{median[name] / median['single']:.2f} |")
    print("| resume | load + first step (s) | ÷ 1 → 1 |")
    print("|---|---|---|")
    for name in ("1→1", "2→1"):
        print(f"| {name} | {load[name]:.3f} | {load[name] / load['1→1']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
