"""Resume across world sizes through real workers: seconds from the grant to the first step of an
attempt that resumes a 2-rank FSDP checkpoint on 1 rank, against one that resumes a 1-rank
checkpoint on 1 rank, measured in the same run.

    python -m bench.dist_handoff                      # tiny model, 3 rounds of each
    python -m bench.dist_handoff --repeats 5

Each round: a commander (SQLite), a worker offering N ranks (``relay worker --nproc-per-node N``)
trains an SFT run whose file leaves the rank count open (``trainer.distributed: {strategy: fsdp}``)
until a checkpoint is durable, is killed with SIGKILL, and a worker offering 1 rank takes the run
over. Measured: the grant of that second attempt (the commander's ``granted_at``) to the first
progress line the resumed trainer writes (polled every 5 ms in the worker's progress file). The
interval holds the trainer's start (Python, torch, the model), the checkpoint's download-free
verification and load (the store is a local folder the worker already has), resharding for N=2,
and one step. N=1 is the baseline; the figure is the ratio. Needs torch and transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.support.commander import Commander, wait_until
from tests.support.distributed import dist_config
from tests.support.relay import WorkerProc


def one_handoff(root: Path, ranks: int) -> float:
    """Seconds from the resumed attempt's grant to its first step, after a hand-off from ``ranks``."""
    root.mkdir(parents=True)
    commander = Commander(db=str(root / "relay.db"), token="admin", workdir=root).start()
    workers: list[WorkerProc] = []
    try:
        client = commander.client()
        token = client.create_token("workers").token
        config = dist_config(strategy="fsdp", nproc=0, max_steps=10_000, run_id="handoff",
                             trainer={"batch_size": 8}, checkpoint={"every_steps": 5, "keep_last": 2})
        config.update(store=str(root / "store"), lease={"ttl_s": 20, "margin_s": 10, "grace_s": 8})
        client.submit(config)
        first = WorkerProc(commander.url, token, "first", root / "first", ["--nproc-per-node", str(ranks)]).start()
        workers.append(first)
        wait_until(lambda: client.checkpoints("handoff").items, 300, "a durable checkpoint")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=30)
        second = WorkerProc(commander.url, token, "second", root / "second").start()
        workers.append(second)
        progress = second.workdir / "runs" / "handoff" / "progress" / "attempt_2.jsonl"

        def first_step() -> float | None:
            if progress.exists():
                for line in progress.read_text().splitlines():
                    if line.endswith("}") and '"metrics"' in line and json.loads(line).get("step"):
                        return time.time()
            return None

        seen = wait_until(first_step, 300, "the resumed attempt's first step", interval_s=0.005)
        attempts = client.run("handoff").attempts
        granted = attempts[1].granted_at
        client.cancel("handoff")
        return seen - granted
    finally:
        for worker in workers:
            worker.stop()
        commander.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="Rounds of each hand-off (alternating).")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    times: dict[int, list[float]] = {1: [], 2: []}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="relay-handoff-") as tmp:
        for round_ in range(args.repeats):
            for ranks in (1, 2):
                seconds = one_handoff(Path(tmp) / f"r{round_}-{ranks}", ranks)
                times[ranks].append(seconds)
                print(f"round {round_}: {ranks} → 1 ranks: grant to first step {seconds:.2f} s", flush=True)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"\nload average {load:.1f} -> {os.getloadavg()[0]:.1f}; medians over {args.repeats} rounds")
    print("| hand-off | grant → first step, median s | rounds |")
    print("|---|---|---|")
    print(f"| 1 rank → 1 rank (baseline) | {one:.2f} | {' '.join(f'{t:.2f}' for t in times[1])} |")
    print(f"| 2 ranks (FSDP, DCP) → 1 rank | {two:.2f} | {' '.join(f'{t:.2f}' for t in times[2])} |")
    print(f"\nratio 2→1 ÷ 1→1: {two / one:.2f}")


if __name__ == "__main__":
    sys.exit(main())
