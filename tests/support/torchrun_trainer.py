"""An external trainer for torchrun that follows the contract for ranks: every rank builds a
``Contract``, joins a gloo group and all-reduces once a step; every rank reports progress and
checkpoints, and the contract writes only rank 0's; the ranks agree to stop (an all-reduce of
``should_stop``) and rank 0 saves. Its state is the sum of the all-reduces, so a skipped or
repeated step shows.

    python -m torch.distributed.run --standalone --nproc-per-node 2 torchrun_trainer.py
    python torchrun_trainer.py --launch 2     through relaytrain's launcher (relaytrain.train.launch)

Knobs (environment): ``TR_STEP_S`` seconds every rank but 0 sleeps per step (so rank 0 waits in
the all-reduce; default 0.05), ``TR_JOURNAL`` a file every rank appends ``RANK PID EVENT STEP
[REASON]`` lines to (``start``, ``step`` after each all-reduce, ``stop``, ``done``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from relaytrain.contract import Contract


def journal(contract: Contract, event: str, step: int, reason: str = "") -> None:
    path = os.environ.get("TR_JOURNAL")
    if path:
        line = f"{contract.rank} {os.getpid()} {event} {step} {reason}".rstrip() + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def save(contract: Contract, step: int, total: float) -> None:
    """Rank 0 writes ``step_<N>/state.json`` atomically, then ``latest``, then announces it."""
    if not contract.is_main:
        return
    out = contract.output_dir
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"step_{step:08d}"
    if final.exists():
        return
    tmp = out / f".tmp-step_{step}-{os.getpid()}"
    tmp.mkdir()
    (tmp / "state.json").write_text(json.dumps({"step": step, "total": total}))
    os.replace(tmp, final)
    (out / ".latest.tmp").write_text(final.name + "\n")
    os.replace(out / ".latest.tmp", out / "latest")
    contract.report_checkpoint(step, final)


def train() -> int:
    import torch
    import torch.distributed as dist

    contract = Contract.from_env()
    contract.install_signal_handlers()
    dist.init_process_group("gloo")
    step, total = 0, 0.0
    if contract.resume_from is not None:
        state = json.loads((contract.resume_from / "state.json").read_text())
        step, total = state["step"], state["total"]
    max_steps = contract.max_steps or 100
    every = contract.checkpoint_every or 10
    pause = float(os.environ.get("TR_STEP_S", "0.05"))
    journal(contract, "start", step)
    while step < max_steps:
        stop = torch.tensor([1.0 if contract.should_stop() else 0.0])
        dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        if stop.item() > 0:
            save(contract, step, total)
            journal(contract, "stop", step, (contract.stop_reason or "peer").replace(" ", "_"))
            dist.barrier()
            dist.destroy_process_group()
            return 0
        if contract.rank != 0:
            time.sleep(pause)
        value = torch.tensor([float(contract.rank + 1)])
        dist.all_reduce(value)
        step += 1
        total += value.item()
        journal(contract, "step", step)
        contract.report_progress(step, {"total": total, "rank": contract.rank})
        if step % every == 0:
            save(contract, step, total)
    save(contract, step, total)
    journal(contract, "done", step)
    dist.barrier()
    dist.destroy_process_group()
    return 0


def launch(world_size: int) -> int:
    """This script's ranks started by relaytrain's launcher, as ``python -m relaytrain.train.run``
    starts a built-in run's."""
    from relaytrain.config.distributed import DistributedPlan
    from relaytrain.train.launch import launch as launch_ranks

    contract = Contract.from_env()
    config = SimpleNamespace(trainer=SimpleNamespace(distributed=None))
    return launch_ranks(DistributedPlan(world_size, "ddp", "gloo"), [str(Path(__file__).resolve())], contract,
                        config)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--launch"]:
        sys.exit(launch(int(sys.argv[2])))
    sys.exit(train())
