"""The worker's entry into a built-in trainer: ``python -m relaytrain.train.run``.

The worker writes the run's config (the JSON form of a run file, ``run_config_dict``) to a
file, points ``RELAY_RUN_CONFIG`` at it, sets the ``RELAY_*`` contract variables (DESIGN §6)
and starts this module. It dispatches on ``kind`` and exits with the contract's codes:

- 0: finished, or stopped as asked (stop file, SIGTERM) after a checkpoint;
- 78 (``EX_CONFIG``): bad config, missing dataset or model, unimportable reward — no retry;
- 75 (``EX_TEMPFAIL``): CUDA out of memory, NCCL or network trouble — retry;
- anything else: a crash with its traceback on stderr, classified by the worker.

A run whose plan asks for several ranks (``trainer.distributed``, or ``resources.gpus`` > 1:
``relaytrain.config.distributed.plan_for``) is handed to ``relaytrain.train.launch``: this
process becomes the torchrun launcher of that many ranks, each running this module again
(a rank, seeing torchrun's variables, trains).

Usage::

    RELAY_RUN_CONFIG=run.json RELAY_OUTPUT_DIR=runs/x/checkpoints python -m relaytrain.train.run

Public API: ``RUNNERS`` (kind → ``"module:function"``, imported lazily), ``load_runner(kind)``,
``execute(config, contract)``, ``launch_plan(config)``, ``main(argv)``, ``exit_rank(code)``.
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from relaytrain.config import parse_run_config
from relaytrain.config.distributed import DistributedPlan, plan_for
from relaytrain.contract import Contract, ExitCode, exit_code_for
from relaytrain.contract.env import under_torchrun
from relaytrain.errors import ConfigError

log = logging.getLogger(__name__)

RUNNERS: dict[str, str] = {
    "sft": "relaytrain.train.sft:run_sft",
    "grpo": "relaytrain.train.grpo:run_grpo",
}
"""Each built-in kind's ``run(config, contract) -> exit code``, as ``module:function``."""


def load_runner(kind: str) -> Callable[[Any, Contract], int]:
    """Import the runner of ``kind``; ``ConfigError`` for a kind with no built-in trainer."""
    target = RUNNERS.get(kind)
    if target is None:
        raise ConfigError(f"kind: {kind!r} has no built-in trainer (built-in: {', '.join(RUNNERS)})")
    module_name, _, function = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, function)


def execute(config: Any, contract: Contract) -> int:
    """Run ``config`` with its built-in trainer; map an escaping error to a contract exit code.

    A configuration error gives ``EX_CONFIG`` and one log line naming it (the traceback only
    at DEBUG); a transient one ``EX_TEMPFAIL``, logged with its traceback; any other
    exception propagates (a crash).
    """
    try:
        return load_runner(config.kind)(config, contract)
    except Exception as exc:
        code = exit_code_for(exc)
        if code is None:
            raise
        if code == ExitCode.CONFIG:
            log.debug("traceback of the configuration error", exc_info=True)
        else:
            traceback.print_exc(file=sys.stderr)
        log.error("%s: %s (exit %d)", type(exc).__name__, exc, code)
        return code


def launch_plan(config: Any, offered: int | None = None) -> DistributedPlan | None:
    """The ranks to launch for ``config`` (a built-in kind whose plan has more than one), or None
    to train in this process: one rank, or this process already is a rank (torchrun's variables).
    ``offered``: the ranks this machine offers (:func:`offered_ranks`), for a run that fixes none."""
    if config.kind not in RUNNERS or under_torchrun():
        return None
    plan = plan_for(config, offered)
    return plan if plan.distributed else None


def offered_ranks(contract: Contract) -> int | None:
    """The ranks this machine offers a distributed run: ``RELAY_NPROC_PER_NODE`` (the worker's
    ``--nproc-per-node``), else one per GPU CUDA sees, else None (a CPU machine offers no number)."""
    if contract.nproc_per_node:
        return contract.nproc_per_node
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else None


def configure_logging(level: str = "INFO") -> None:
    """Plain log lines on stderr; entry points only."""
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def read_config(path: str | Path) -> Any:
    """The run config the worker wrote (JSON), validated."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"RELAY_RUN_CONFIG: cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"RELAY_RUN_CONFIG: {path} is not valid JSON: {exc.msg}") from exc
    return parse_run_config(data)


def main(argv: Sequence[str] | None = None) -> int:
    """Read the contract and ``RELAY_RUN_CONFIG`` (or the one argument), run, return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        contract = Contract.from_env()
        configure_logging(contract.log_level)
        path = args[0] if args else contract.run_config
        if not path:
            raise ConfigError("RELAY_RUN_CONFIG: required (the path of the run config JSON)")
        config = read_config(path)
    except ConfigError as exc:
        configure_logging()
        log.error("%s", exc)
        return ExitCode.CONFIG
    if contract.run_id == "local":
        contract.run_id = config.run_id
    elif contract.run_id != config.run_id:
        log.warning("RELAY_RUN_ID %r differs from the config's run_id %r", contract.run_id, config.run_id)
    plan = launch_plan(config, offered_ranks(contract)) if config.kind in RUNNERS else None
    if plan is not None:
        from relaytrain.train.launch import launch

        return launch(plan, ["-m", "relaytrain.train.run", *args], contract, config)
    contract.install_signal_handlers()
    return execute(config, contract)


def exit_rank(code: int) -> None:
    """End a torchrun rank with ``code`` without the interpreter's teardown.

    A finished rank has saved, reported and left its process group; what is left is FSDP's and
    gloo's objects, whose C++ destructors, run in whatever order module teardown reaches them,
    race gloo's threads: a rank that had finished aborted (SIGABRT, "terminate called without
    an active exception") once in CI, and the launcher rightly called that a failure."""
    logging.shutdown()  # every handler flushed and closed
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    code = main()
    if under_torchrun():
        exit_rank(code)
    gc.freeze()  # exit without the GC passes over every torch/transformers object (about 2 s)
    sys.exit(code)
