"""Asynchronous GRPO (the trainer + 1 rollout worker) against synchronous GRPO (the trainer alone),
the same number of groups, the same 2 CPU cores, long-tailed completion lengths.

    .venv/bin/python bench/rollout_async.py            # the figures of docs/benchmarks.md, 4-10 min on 2 cores
    .venv/bin/python bench/rollout_async.py --quick    # a smoke run, ~35 s

What runs, back to back in one invocation
-----------------------------------------
1. A dataset (JSON array, TRL's GRPO shape ``prompt`` + ``answer``, see ``_rollout_common``):
   ``"ab*5=" → "ababa"``, answer lengths log-uniform in 1 … 63 characters (tokens; 64 with EOS),
   and ``--held-out`` records whose prompts are not in it.
2. The tiny model fine-tuned on it in-process (``SFTSession``, ``--sft-steps`` steps, 2 threads),
   so that its completions end where the answers do — long-tailed — instead of all running to the
   token limit. Both GRPO runs start from this checkpoint.
3. **sync**: the built-in GRPO trainer (``python -m relaytrain.train.run``, as a worker starts it)
   alone, ``OMP_NUM_THREADS=2``: it samples every group itself.
4. **sync1** (a control; ``--modes`` leaves it out): the trainer alone on 1 thread, to tell the
   gain of asynchrony from that of one thread against two (for the tiny model, 2 threads are not
   faster than 1, and under other load much slower: OpenMP threads wait for each other).
5. **async**: the same run file plus ``rollout:``, the trainer on 1 thread and one rollout worker
   (``RolloutWorker``, the torch engine, 1 thread) told where the manager is by the trainer's
   ``rollout`` event line (a static directory: no commander). Each step trains the lowest ready
   groups; the trainer samples the shortfall itself.

Both train ``--steps`` steps × ``--prompts`` groups of ``--generations`` completions of at most
``--max-new-tokens`` tokens (reward: exact match), a checkpoint every ``--every`` steps.

Figures
-------
- wall time of training (the first step's start — its progress line's appearance less its
  ``perf/time_per_step`` — to the trainer's exit, checkpoints included) and of the whole trainer
  process (imports and model load too, ~10 s on the 2-core VM); **speed-up = sync training time ÷
  async training time** (target ≥ 1.5; sync1 ÷ async beside it); seconds per step (median of
  ``perf/time_per_step``);
- groups by source (``rollout/trainer_generated`` / ``rollout/worker_generated``);
- staleness (versions between the weights that sampled a trained group and those training it):
  mean over steps of ``rollout/staleness_mean``, max of ``rollout/staleness_max``;
- held-out exact match (greedy, ``evaluate_exact_match``) at **equal wall time**: of each run, the
  last checkpoint written (its files' mtime) before the shorter run ended, both measured from
  their trainer's start; and of the SFT start point.

Prints a table and a JSON summary (``--json FILE`` writes it too).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _rollout_common import Trainer, WorkerProcess, read_lines, repeat_records  # noqa: E402

RUN_ID = "bench-async"


def build_init(root: Path, records: list[dict[str, str]], steps: int) -> Path:
    """SFT the tiny model on ``records`` for ``steps`` steps in this process; return the checkpoint folder."""
    import torch

    from relaytrain.config import SFTRun
    from relaytrain.contract import Contract
    from relaytrain.train.session import open_manager
    from relaytrain.train.sft import SFTSession

    data = root / "sft.json"
    data.write_text(json.dumps([{"prompt": r["prompt"], "completion": r["answer"]} for r in records]))
    config = SFTRun(run_id="bench-sft", kind="sft", max_steps=steps, data={"path": str(data)},
                    checkpoint={"every_steps": steps}, trainer={"batch_size": 32})
    contract = Contract.local(root / "sft")
    torch.set_num_threads(2)
    session = SFTSession(config, contract)
    for _ in range(steps):
        session.train_step()
    with open_manager(contract, config.checkpoint) as manager:
        manager.save(session.checkpoint_state(), session.step, epoch=0, metadata={"run_id": "bench-sft", "kind": "sft"})
    folders = sorted((root / "sft").glob("step_*"))
    if not folders:
        raise SystemExit(f"the SFT init wrote no checkpoint under {root / 'sft'}")
    return folders[-1]


def run_config(args: argparse.Namespace, data: Path, init: Path, rollout: bool) -> dict[str, Any]:
    config: dict[str, Any] = {
        "run_id": RUN_ID, "kind": "grpo", "model": "tiny", "max_steps": args.steps,
        "data": {"path": str(data)},
        "init_from": {"path": str(init)},
        "checkpoint": {"every_steps": args.every, "keep_last": 100_000},
        "trainer": {"prompts_per_step": args.prompts, "num_generations": args.generations,
                    "max_new_tokens": args.max_new_tokens, "learning_rate": args.lr,
                    "rewards": [{"name": "correctness"}], "seed": 0},
    }
    if rollout:
        config["rollout"] = {"max_staleness": args.max_staleness, "sync_every": args.sync_every}
    return config


MODES = {"sync": (2, False), "sync1": (1, False), "async": (1, True)}
"""mode → (torch threads of the trainer, rollout worker attached). ``sync1`` is a control: the trainer
alone on one thread, the thread count of the asynchronous trainer."""


def wait_ready(log_path: Path, timeout_s: float = 120) -> None:
    """Until the rollout worker's log says it started (its imports done)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log_path.exists() and " started (" in log_path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise SystemExit(f"the rollout worker did not start within {timeout_s:.0f} s (log {log_path})")


def run_mode(name: str, args: argparse.Namespace, root: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Train one mode to the end; return its figures (checkpoint times relative to the trainer's start)."""
    threads, asynchronous = MODES[name]
    trainer = Trainer(config, root / name, threads=threads)
    worker = None
    if asynchronous:  # the pool's worker is up (imports done) before the run starts, as in a deployment
        worker = WorkerProcess(["--progress-file", str(trainer.progress_file), "--run", RUN_ID,
                                "--max-groups", str(args.worker_groups)], root / f"{name}-worker.log").start()
        wait_ready(worker.log_path)
    started_wall = time.time()
    trainer.start()
    first_seen = None  # when the first progress line appeared (monotonic)
    try:
        deadline = time.monotonic() + args.timeout_s
        while trainer.poll() is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: the trainer ran past {args.timeout_s:.0f} s (log {trainer.log_path})")
            if first_seen is None and read_lines(trainer.progress_file)[0]:
                first_seen = time.monotonic()
            time.sleep(0.05)
        if trainer.proc.returncode != 0:
            raise SystemExit(f"{name}: the trainer exited {trainer.proc.returncode}: {trainer.log_tail()}")
    finally:
        if worker is not None:
            worker.stop()
        trainer.kill()
    total = trainer.ended - trainer.started
    progress, events = read_lines(trainer.progress_file)
    steps = [p for p in progress if "perf/time_per_step" in p["metrics"]]
    if not steps or first_seen is None:
        raise SystemExit(f"{name}: the trainer wrote no step's progress line: {trainer.log_tail()}")
    # training began one step before the first progress line appeared (the bench polls every 50 ms)
    train_s = trainer.ended - (first_seen - steps[0]["metrics"]["perf/time_per_step"])
    last = steps[-1]["metrics"] if steps else {}
    checkpoints = []
    for e in events:
        if e.get("event") == "checkpoint":
            folder = Path(e["path"])
            written = max(f.stat().st_mtime for f in folder.rglob("*") if f.is_file())
            checkpoints.append((written - started_wall, int(e["step"]), folder))
    groups = args.steps * args.prompts
    staleness = [p["metrics"].get("rollout/staleness_mean") for p in steps]
    staleness = [s for s in staleness if s is not None]
    return {
        "mode": name, "threads": trainer.threads, "total_s": total, "train_s": train_s, "steps": len(steps),
        "step_median_s": statistics.median(p["metrics"]["perf/time_per_step"] for p in steps),
        "step_sum_s": sum(p["metrics"]["perf/time_per_step"] for p in steps),
        "trainer_groups": int(last.get("rollout/trainer_generated", groups)),
        "worker_groups": int(last.get("rollout/worker_generated", 0)),
        "requeued": int(last.get("rollout/groups_requeued", 0)),
        "dropped_stale": int(last.get("rollout/dropped_stale", 0)),
        "staleness_mean": statistics.fmean(staleness) if staleness else 0.0,
        "staleness_max": max((p["metrics"].get("rollout/staleness_max") or 0 for p in steps), default=0),
        "completion_mean": statistics.fmean(p["metrics"].get("completion_length") or 0 for p in steps),
        "reward_last": statistics.fmean((p["metrics"].get("reward_mean") or 0) for p in steps[-5:]),
        "checkpoints": checkpoints,
    }


def accuracy(folder: Path, held_out: list[dict[str, str]], max_new_tokens: int) -> float:
    from relaytrain.train.data import normalize_record
    from relaytrain.train.exact_match import evaluate_exact_match
    from relaytrain.train.tiny import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(folder), seed=0)
    examples = [normalize_record(r) for r in held_out]
    return evaluate_exact_match(model, tokenizer, examples, max_new_tokens).accuracy


def equal_time(runs: list[dict[str, Any]], held_out: list[dict[str, str]], args: argparse.Namespace) -> float:
    """Each run's held-out accuracy at its last checkpoint written before the shorter run ended."""
    budget = min(r["total_s"] for r in runs)
    for r in runs:
        before = [c for c in r["checkpoints"] if c[0] <= budget]
        if not before:
            r["equal_time"] = None
            continue
        at, step, folder = before[-1]
        r["equal_time"] = {"step": step, "written_s": at, "accuracy": accuracy(folder, held_out, args.max_new_tokens)}
    return budget


def print_table(runs: list[dict[str, Any]], budget: float, init_accuracy: float) -> None:
    print(f"\n{'mode':<6} {'threads':>7} {'process s':>9} {'train s':>8} {'s/step':>7} {'groups trainer/worker':>22} "
          f"{'requeued':>8} {'stale mean/max':>15} {'compl. len':>10} {'reward':>7} {'equal-time step':>15} "
          f"{'held-out EM':>11}")
    for r in runs:
        et = r["equal_time"]
        print(f"{r['mode']:<6} {r['threads']:>7} {r['total_s']:>9.1f} {r['train_s']:>8.1f} {r['step_median_s']:>7.2f} "
              f"{r['trainer_groups']:>11}/{r['worker_groups']:<10} {r['requeued']:>8} "
              f"{r['staleness_mean']:>8.2f}/{r['staleness_max']:<6.0f} {r['completion_mean']:>10.1f} "
              f"{r['reward_last']:>7.3f} {et['step'] if et else '-':>15} "
              f"{(format(et['accuracy'], '.1%') if et else '-'):>11}")
    by_mode = {r["mode"]: r for r in runs}
    asynchronous = by_mode["async"]
    for name in ("sync", "sync1"):
        if name in by_mode:
            base = by_mode[name]
            target = " (target ≥ 1.5)" if name == "sync" else ""
            print(f"speed-up, training ({name} ÷ async): {base['train_s'] / asynchronous['train_s']:.2f}×{target}; "
                  f"whole process {base['total_s'] / asynchronous['total_s']:.2f}×; median s/step "
                  f"{base['step_median_s'] / asynchronous['step_median_s']:.2f}×")
    print(f"equal wall time {budget:.1f} s from each trainer's start; SFT start point held-out EM {init_accuracy:.1%}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (< 60 s): few steps, short completions")
    parser.add_argument("--steps", type=int, default=40, help="GRPO steps of each mode")
    parser.add_argument("--prompts", type=int, default=8, help="groups per step")
    parser.add_argument("--generations", type=int, default=4, help="completions per group")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-staleness", type=int, default=2, help="rollout.max_staleness")
    parser.add_argument("--sync-every", type=int, default=1, help="rollout.sync_every")
    parser.add_argument("--worker-groups", type=int, default=4, help="groups the rollout worker leases a batch")
    parser.add_argument("--every", type=int, default=4, help="checkpoint every N steps")
    parser.add_argument("--sft-steps", type=int, default=150)
    parser.add_argument("--init", type=Path, default=None,
                        help="start both modes from this checkpoint (e.g. a kept run's sft/step_*) instead of SFT")
    parser.add_argument("--train-records", type=int, default=4000)
    parser.add_argument("--held-out", type=int, default=200)
    parser.add_argument("--timeout-s", type=float, default=600, help="longest a mode may run")
    parser.add_argument("--modes", default="sync,sync1,async",
                        help="modes in order, comma-separated, async last: sync (2 threads), sync1 (1 thread), async")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.every, args.max_new_tokens, args.sft_steps = 4, 2, 16, 5
        args.prompts, args.generations, args.train_records, args.held_out = 4, 2, 200, 16
        args.modes = "sync,async"
    args.modes = args.modes.split(",")
    if args.modes[-1:] != ["async"] or not set(args.modes) <= set(MODES) or len(args.modes) < 2:
        parser.error(f"--modes: one or more of sync, sync1 then async, comma-separated; got {','.join(args.modes)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from relaytrain.train.session import quiet_transformers

    quiet_transformers()
    with tempfile.TemporaryDirectory(prefix="rollout-async-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        records = repeat_records(args.train_records, seed=0)
        held_out = repeat_records(args.held_out, seed=1, exclude={r["prompt"] for r in records})
        data = root / "train.json"
        data.write_text(json.dumps(records))
        lengths = sorted(len(r["answer"]) for r in records)
        print(f"dataset: {len(records)} records, answer length median {lengths[len(lengths) // 2]}, "
              f"p90 {lengths[int(len(lengths) * 0.9)]}, max {lengths[-1]} characters; {len(held_out)} held out")
        started = time.perf_counter()
        if args.init is not None:
            init = args.init
        else:
            init = build_init(root, records, args.sft_steps)
            print(f"SFT init: {args.sft_steps} steps in {time.perf_counter() - started:.1f} s")
        init_accuracy = accuracy(init, held_out, args.max_new_tokens)
        runs = []
        for name in args.modes:
            run = run_mode(name, args, root, run_config(args, data, init, MODES[name][1]))
            print(f"{name}: {run['steps']} steps in {run['total_s']:.1f} s")
            runs.append(run)
        budget = equal_time(runs, held_out, args)
        print_table(runs, budget, init_accuracy)
        summary = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "init_accuracy": init_accuracy, "equal_time_s": budget,
                   "speedup": {r["mode"]: r["train_s"] / runs[-1]["train_s"] for r in runs[:-1]},
                   "runs": [{k: v for k, v in r.items() if k != "checkpoints"} for r in runs]}
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
