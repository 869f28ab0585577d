"""The GRPO trainer's run loop: resume, then steps, progress lines, trajectories and checkpoints
until ``max_steps`` or a stop (``grpo.run_grpo`` calls it; ``grpo.GRPOSession`` is one step).

On several ranks (``trainer.distributed``, ``grpo_dist``) rank 0 alone reports and writes
trajectories; checkpoints are ``sharded.save_checkpoint``'s (DDP: rank 0 saves the replicated
state, the others wait at a barrier; FSDP: every rank writes its shards, rank 0 commits); every
rank stops at the same step when any is asked to.

Public API: ``run_grpo(config, contract) -> int``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from relaytrain.config import GRPORun
from relaytrain.contract import Contract, ExitCode
from relaytrain.train.grpo import GRPOSession, Rollout
from relaytrain.train.grpo_report import write_trajectories
from relaytrain.train.session import log_end, open_manager, quiet_transformers, resume, train_steps
from relaytrain.train.sharded import save_checkpoint
from relaytrain.train.tracking import Trackers, open_trackers

log = logging.getLogger(__name__)


def run_grpo(config: GRPORun, contract: Contract) -> int:
    """Train ``config`` under ``contract`` to the target step; return the exit code (0).

    Resumes from ``contract.resume_from`` when set (verified first). Stops early, after a
    checkpoint, when the stop file appears or a stop was requested (the entry point turns SIGTERM
    into one). Errors propagate: the entry point maps them to exit codes.
    """
    quiet_transformers()
    session = GRPOSession(config, contract)
    dist = session.dist
    try:
        resume(session, contract)
    except BaseException:
        session.close()
        raise
    policy = config.checkpoint
    meta = {"run_id": contract.run_id, "kind": "grpo"}
    keep_trajectories = (config.trajectories.save or contract.save_rollout_trajectories) and dist.is_main
    trackers = open_trackers(config, contract, start_step=session.step) if dist.is_main else Trackers([])

    def report(result: tuple[Rollout, dict[str, Any]], at_checkpoint: bool) -> None:
        rollout, session.last_metrics = result
        contract.report_progress(session.step, session.last_metrics)
        trackers.log(session.step, session.last_metrics)
        if session.pool is not None:
            session.pool.after_wait()
        if keep_trajectories:  # named by the contract's pattern, the rollout id being the step
            write_trajectories(rollout, contract.trajectory_path(rollout.step, config.trajectories.subdir),
                               session.tokenizer)

    if session.pool is not None:
        session.pool.start()
    try:
        # Rank 0 alone owns the checkpoint folder; closing waits for an asynchronous save in flight.
        with open_manager(contract, policy) if dist.is_main else contextlib.nullcontext() as manager:

            def save() -> None:
                trackers.flush()  # on disk before the checkpoint is: the worker stores both then
                counters, extra = session.checkpoint_parts()  # on FSDP every rank gathers the reference
                save_checkpoint(session, manager, "grpo", counters, extra_files=extra, epoch=contract.epoch,
                                metadata=meta)

            train_steps(session, contract, policy.every_steps, report, save,
                        should_stop=lambda: dist.any_rank(contract.should_stop()))
    finally:
        if session.pool is not None:
            session.pool.close()
        session.close()
        trackers.close()
        contract.close()
        dist.close()
    log_end(session, contract)
    return ExitCode.OK
