"""Train without a commander: ``python -m relaytrain.train sft|grpo …`` (mounted as ``relay train``).

Usage::

    python -m relaytrain.train sft --model tiny --dataset arithmetic --max-steps 400 \\
        --output-dir runs/arith          # checkpoints in runs/arith/step_*/,
                                         # progress in runs/arith/progress.jsonl,
                                         # `touch runs/arith/STOP` (or Ctrl-C) stops cleanly
    python -m relaytrain.train sft … --resume-from auto   # the default: newest valid checkpoint
    python -m relaytrain.train sft … --lora --lr 5e-3
    python -m relaytrain.train sft … --report-to tensorboard,wandb   # runs/arith/tracking/
    python -m relaytrain.train sft … --nproc-per-node 2 --strategy fsdp  # 2 ranks under torchrun

The flags build an ``SFTRun`` (or ``GRPORun``) config and a local ``Contract`` for the output
folder; resuming is automatic (``--resume-from auto``): a run restarted on the same folder
continues from its newest valid checkpoint. ``--resume-from none`` starts afresh.
``--nproc-per-node N`` (N > 1) makes this process the torchrun launcher of N ranks
(``relaytrain.train.launch``), each running this command again; ``--strategy`` picks DDP or
FSDP2 (``trainer.distributed``).

Adding a trainer: put a ``TrainerCLI`` in your module (flags and a config builder; keep the
module free of torch at import) and name it in ``TRAINERS``; its runner is looked up by
``kind`` in ``relaytrain.train.run.RUNNERS``. A ``TRAINERS`` entry whose module does not
exist yet is left out of the command line.

Public API: ``TrainerCLI``, ``TRAINERS``, ``add_common_arguments``, ``add_lora_arguments``,
``common_fields``, ``lora_from_args``, ``distributed_from_args``, ``resolve_resume``, ``build_parser``,
``main(argv)``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from relaytrain.config import TRACKERS, SFTRun, format_validation_error, parse_report_to
from relaytrain.config.distributed import STRATEGIES
from relaytrain.contract import Contract, ExitCode
from relaytrain.errors import CheckpointError, ConfigError
from relaytrain.train.data import BUILTIN_DATASETS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainerCLI:
    """One ``relay train <name>`` subcommand: its help, its own flags, and its config builder."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    build_config: Callable[[argparse.Namespace], Any]


TRAINERS: dict[str, str] = {
    "sft": "relaytrain.train.standalone:SFT_CLI",
    "grpo": "relaytrain.train.grpo_cli:GRPO_CLI",
}
"""Subcommand → ``module:attribute`` of its ``TrainerCLI`` (imported when the parser is built)."""


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every built-in trainer shares: model, data, steps, output, resume, checkpoints."""
    parser.add_argument("--model", default="tiny", help="'tiny', a model folder, a checkpoint folder or a hub id")
    parser.add_argument(
        "--dataset",
        default="arithmetic",
        help=f"a built-in dataset ({', '.join(BUILTIN_DATASETS)}) or a JSONL/Parquet file or datasets folder",
    )
    parser.add_argument("--template", default="generic", choices=["generic", "r1", "deepseek", "chat"])
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data and shuffling")
    parser.add_argument("--max-steps", type=int, required=True, help="the run's target step")
    parser.add_argument("--output-dir", type=Path, required=True, help="checkpoints, progress.jsonl and STOP")
    parser.add_argument(
        "--resume-from",
        default="auto",
        help="'auto' (newest valid checkpoint in --output-dir, if any), 'none', or a checkpoint folder",
    )
    parser.add_argument("--init-from", default=None, help="a checkpoint or model folder whose weights start the run")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="checkpoint every this many steps")
    parser.add_argument("--keep-last", type=int, default=3, help="keep the newest this many checkpoints")
    parser.add_argument("--async-save", action="store_true", help="write checkpoints in a background thread")
    parser.add_argument("--run-id", default="local", help="name of the run (progress lines, checkpoints, trackers)")
    parser.add_argument(
        "--report-to", default="none", metavar="TRACKERS",
        help=f"also log metrics to these trackers, comma-separated: {', '.join(TRACKERS)}, or 'none' (the default); "
             "files in --output-dir/tracking/ (W&B offline unless WANDB_MODE is set; MLflow in a SQLite file "
             "unless MLFLOW_TRACKING_URI is set)",
    )
    parser.add_argument(
        "--nproc-per-node", type=int, default=0, metavar="N",
        help="train on N processes (ranks) of this machine under torchrun: one per GPU on a GPU machine, gloo ranks "
             "on a CPU one (trainer.distributed.nproc_per_node; default: one process)")
    parser.add_argument("--strategy", choices=STRATEGIES, default=None,
                        help="how the ranks share the model: 'ddp' (replicated, the default) or 'fsdp' (FSDP2, "
                             "sharded) (trainer.distributed.strategy)")
    parser.add_argument("--log-level", default="INFO")


def distributed_from_args(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``trainer.distributed`` section ``--nproc-per-node`` and ``--strategy`` ask for, or None
    without either."""
    if not args.nproc_per_node and args.strategy is None:
        return None
    return {"strategy": args.strategy or "ddp", "nproc_per_node": args.nproc_per_node}


def add_lora_arguments(parser: argparse.ArgumentParser) -> None:
    """``--lora``, ``--lora-r``, ``--lora-alpha``, ``--lora-dropout``, ``--lora-targets``, ``--use-unsloth``."""
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter instead of all weights")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=int, default=16)
    parser.add_argument("--lora-dropout", type=float, default=0.0)
    parser.add_argument("--lora-targets", default="q_proj,v_proj", help="comma-separated module names")
    parser.add_argument("--use-unsloth", action="store_true",
                        help="load the model (and adapter) with unsloth; fails at start if unsloth is not installed")


def lora_from_args(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``trainer.lora`` section the LoRA flags ask for, or None without ``--lora``."""
    if not args.lora:
        return None
    targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    return {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout, "target_modules": targets}


def common_fields(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """The run-file fields the common flags give (everything but ``trainer``)."""
    data: dict[str, Any] = {"template": args.template, "seed": args.data_seed}
    if args.dataset in BUILTIN_DATASETS:
        data["builtin"] = args.dataset
    else:
        data["path"] = args.dataset
    fields: dict[str, Any] = {
        "run_id": args.run_id,
        "kind": kind,
        "report_to": parse_report_to(args.report_to),
        "model": args.model,
        "max_steps": args.max_steps,
        "data": data,
        "checkpoint": {
            "every_steps": args.checkpoint_every,
            "keep_last": args.keep_last,
            "async_save": args.async_save,
        },
    }
    if args.init_from:
        fields["init_from"] = {"path": args.init_from}
    return fields


def _sft_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--schedule", default="constant", choices=["constant", "linear", "cosine"])
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0, help="seed of the model init and of torch")
    add_lora_arguments(parser)


def _sft_config(args: argparse.Namespace) -> SFTRun:
    trainer = {
        "learning_rate": args.lr,
        "batch_size": args.batch_size,
        "grad_accum_steps": args.grad_accum,
        "warmup_steps": args.warmup_steps,
        "schedule": args.schedule,
        "max_grad_norm": args.max_grad_norm,
        "weight_decay": args.weight_decay,
        "seed": args.seed,
        "lora": lora_from_args(args),
        "use_unsloth": args.use_unsloth,
        "distributed": distributed_from_args(args),
    }
    return SFTRun.model_validate({**common_fields(args, "sft"), "trainer": trainer})


SFT_CLI = TrainerCLI(help="supervised fine-tuning", add_arguments=_sft_arguments, build_config=_sft_config)


def _load_cli(target: str) -> TrainerCLI | None:
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None  # that trainer is not part of this install (yet)
        raise
    return getattr(module, attribute)


def build_parser(prog: str = "python -m relaytrain.train") -> tuple[argparse.ArgumentParser, dict[str, TrainerCLI]]:
    """The parser with one subcommand per available trainer, and those trainers' CLIs."""
    parser = argparse.ArgumentParser(prog=prog, description="Train without a commander (relaytrain).")
    sub = parser.add_subparsers(dest="trainer", required=True, metavar="{" + ",".join(TRAINERS) + "}")
    available: dict[str, TrainerCLI] = {}
    for name, target in TRAINERS.items():
        cli = _load_cli(target)
        if cli is None:
            continue
        available[name] = cli
        child = sub.add_parser(name, help=cli.help, description=cli.help)
        add_common_arguments(child)
        cli.add_arguments(child)
    return parser, available


def resolve_resume(value: str, output_dir: Path) -> Path | None:
    """The checkpoint ``--resume-from`` names: ``auto`` → the newest valid one (or None), ``none`` → None."""
    if value == "none":
        return None
    if value == "auto":
        from relaytrain.checkpoint import find_latest_valid

        if not output_dir.exists():
            return None
        latest = find_latest_valid(output_dir)
        for skipped in latest.skipped:
            log.warning("skipping invalid checkpoint: %s", skipped)
        return None if latest.path is None else Path(latest.path)
    path = Path(value)
    if not path.is_dir():
        raise ConfigError(f"--resume-from: no such checkpoint folder: {value}")
    return path


def main(argv: Sequence[str] | None = None, prog: str = "python -m relaytrain.train") -> int:
    """Parse the flags, build the config and a local contract, train; return the exit code."""
    from relaytrain.train.run import configure_logging, execute, launch_plan, offered_ranks

    argv = list(sys.argv[1:] if argv is None else argv)
    parser, available = build_parser(prog)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        config = available[args.trainer].build_config(args)
        resume = resolve_resume(args.resume_from, args.output_dir)
    except ValidationError as exc:
        log.error("invalid flags:\n%s", format_validation_error(exc))
        return ExitCode.CONFIG
    except (ConfigError, CheckpointError) as exc:
        log.error("%s", exc)
        return ExitCode.CONFIG
    contract = Contract.local(args.output_dir, run_id=args.run_id, resume_from=resume)
    plan = launch_plan(config, offered_ranks(contract))
    if plan is not None:  # every rank runs this command again
        from relaytrain.train.launch import launch

        return launch(plan, ["-m", "relaytrain.train", *argv], contract, config)
    contract.install_signal_handlers()
    if resume is not None:
        log.info("resuming from %s", resume)
    return execute(config, contract)


if __name__ == "__main__":
    sys.exit(main())
