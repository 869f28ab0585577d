"""Learning with the rollout pool: held-out exact match of GRPO with one rollout worker against the
trainer alone, same SFT start point, same steps, over several seeds (issue 10: "within 3 points").

    .venv/bin/python bench/rollout_learning.py --seeds 0 1 2 3                 # both modes, staleness 4
    .venv/bin/python bench/rollout_learning.py --seeds 0 1 --modes pool --max-staleness 1
    .venv/bin/python bench/rollout_learning.py --init runs/sft/step_00000300   # reuse a start point

The start point: the tiny model SFT-ed on 2-digit addition for ``--sft-steps`` steps (300: about
48 % held-out exact match), as ``sft_checkpoint`` in tests/integration/test_grpo.py. Each mode runs
``python -m relaytrain.train.run`` (the worker's trainer entry) for 150 GRPO steps (8 prompts × 4
completions, lr 1e-4), the trainer on 1 thread; **pool** adds ``rollout:`` and one rollout worker
(1 thread, in this process) that finds the manager in the trainer's progress file. The held-out
exact match of the last checkpoint is printed per seed, with the worker's share of the groups.
A pool run is not reproducible even with its seed: which groups the worker samples, and with
which weights, depends on timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _rollout_common import ProgressFileDirectory  # noqa: E402

from tests.support.grpo import finish, launch, progress  # noqa: E402

STEPS = 150


def sft_start(folder: Path, steps: int) -> Path:
    import torch

    from relaytrain.checkpoint import CheckpointManager
    from relaytrain.config import SFTRun
    from relaytrain.contract import Contract
    from relaytrain.train.sft import SFTSession

    torch.set_num_threads(1)
    session = SFTSession(SFTRun(run_id="sft", kind="sft", max_steps=steps), Contract.local(folder))
    while session.step < steps:
        session.train_step()
    manager = CheckpointManager(folder)
    try:
        return Path(manager.save(session.checkpoint_state(), session.step))
    finally:
        manager.close()


def run(mode: str, seed: int, init: Path, root: Path, max_staleness: int) -> tuple[float, float]:
    """Held-out exact match after STEPS steps, and the share of groups the worker generated."""
    from relaytrain.config import GRPORun
    from relaytrain.rollout.worker import RolloutWorker, RolloutWorkerSettings
    from relaytrain.train.data import builtin_dataset
    from relaytrain.train.exact_match import evaluate_exact_match
    from relaytrain.train.tiny import load_model_and_tokenizer

    settings: dict[str, Any] = dict(
        run_id="learn", kind="grpo", max_steps=STEPS, checkpoint={"every_steps": STEPS},
        trainer={"learning_rate": 1e-4, "prompts_per_step": 8, "num_generations": 4, "max_new_tokens": 8,
                 "seed": seed})
    if mode == "pool":
        settings["rollout"] = {"max_staleness": max_staleness}
    folder = root / f"{mode}-{seed}"
    trainer = launch(GRPORun(**settings), folder, STEPS, env={"RELAY_INIT_FROM": str(init)})
    worker = thread = None
    if mode == "pool":
        worker_settings = RolloutWorkerSettings(worker_id="gen", run_id="learn", threads=1, poll_s=0.1,
                                                backoff_max_s=0.5)
        worker = RolloutWorker(worker_settings, ProgressFileDirectory("learn", folder / "progress.jsonl"))
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
    try:
        finish(trainer)
    finally:
        if worker is not None and thread is not None:
            worker.stop()
            thread.join(timeout=60)
    model, tokenizer = load_model_and_tokenizer(str(folder / "checkpoints" / f"step_{STEPS:08d}"))
    accuracy = evaluate_exact_match(model, tokenizer, builtin_dataset("arithmetic", "test"), 8).accuracy
    metrics = [x["metrics"] for x in progress(folder / "progress.jsonl") if "metrics" in x]
    share = metrics[-1].get("rollout/worker_generated", 0.0) / (STEPS * 8)
    return accuracy, share


def main() -> None:
    import tempfile

    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--modes", nargs="+", default=["sync", "pool"], choices=["sync", "pool"])
    parser.add_argument("--max-staleness", type=int, default=4)
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--init", type=Path, default=None, help="an SFT checkpoint to start from")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = args.keep or Path(tempfile.mkdtemp(prefix="rollout-learning-"))
    init = args.init or sft_start(root / "sft", args.sft_steps)
    from relaytrain.train.data import builtin_dataset
    from relaytrain.train.exact_match import evaluate_exact_match
    from relaytrain.train.tiny import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(init))
    start = evaluate_exact_match(model, tokenizer, builtin_dataset("arithmetic", "test"), 8).accuracy
    print(f"SFT start point: {start:.1%}")
    results: dict[str, list[float]] = {}
    for mode in args.modes:
        for seed in args.seeds:
            accuracy, share = run(mode, seed, init, root, args.max_staleness)
            results.setdefault(mode, []).append(accuracy)
            print(f"{mode:<5} seed {seed}: held-out exact match {accuracy:.1%}  (worker's groups {share:.0%})",
                  flush=True)
    for mode, values in results.items():
        spread = f" ± {statistics.stdev(values):.1%}" if len(values) > 1 else ""
        print(f"{mode:<5} mean over {len(values)} seeds: {statistics.fmean(values):.1%}{spread}")


if __name__ == "__main__":
    main()
