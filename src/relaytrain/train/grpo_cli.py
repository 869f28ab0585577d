"""The ``grpo`` subcommand of ``python -m relaytrain.train`` (no torch at import).

Usage::

    python -m relaytrain.train grpo --init-from runs/arith/step_00000400 --max-steps 200 \\
        --output-dir runs/arith-rl --num-generations 4 --prompts-per-step 8 --lr 1e-4
    python -m relaytrain.train grpo … --reward correctness --reward my_rewards:brevity=0.1

The common flags (model, dataset, template, steps, output, resume, checkpoints) come from
``standalone.add_common_arguments``; the flags here fill ``GRPORun.trainer``.

Public API: ``GRPO_CLI`` (a ``standalone.TrainerCLI``), ``add_grpo_arguments(parser)``,
``grpo_from_args(args)``.
"""

from __future__ import annotations

import argparse
from typing import Any

from relaytrain.config import GRPORun, GRPOTrainer
from relaytrain.errors import ConfigError
from relaytrain.train.standalone import (
    TrainerCLI,
    add_lora_arguments,
    common_fields,
    distributed_from_args,
    lora_from_args,
)

_DEFAULTS = GRPOTrainer()


def add_grpo_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``GRPORun.trainer``; each default is the config's."""
    d = _DEFAULTS
    parser.add_argument("--lr", type=float, default=d.learning_rate, help="learning rate (constant)")
    parser.add_argument("--prompts-per-step", type=int, default=d.prompts_per_step)
    parser.add_argument("--num-generations", type=int, default=d.num_generations, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=d.temperature)
    parser.add_argument("--top-p", type=float, default=d.top_p)
    parser.add_argument("--beta", type=float, default=d.beta, help="KL weight (0: no reference model)")
    parser.add_argument("--epsilon", type=float, default=d.epsilon, help="lower (and default upper) clip")
    parser.add_argument("--epsilon-high", type=float, default=d.epsilon_high, help="upper clip (DAPO)")
    parser.add_argument("--scale-rewards", default=d.scale_rewards, choices=["group", "batch", "none"])
    parser.add_argument("--loss-type", default=d.loss_type, choices=["dapo", "grpo", "dr_grpo"])
    parser.add_argument("--num-iterations", type=int, default=d.num_iterations, help="updates per batch")
    parser.add_argument("--mask-truncated", action="store_true", help="no loss on completions without EOS")
    parser.add_argument(
        "--reward",
        "--reward-function",
        dest="reward",
        action="append",
        default=None,
        metavar="NAME[=WEIGHT]",
        help="correctness, keyword_match, strict_format or module:function; repeatable (default: correctness)",
    )
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the model init, torch and sampling")
    parser.add_argument("--save-rollout-trajectories", action="store_true", help="write rollout_*.jsonl")
    add_lora_arguments(parser)


def reward_spec(text: str) -> dict[str, Any]:
    """``name`` or ``name=weight`` as a ``RewardSpec`` mapping."""
    name, sep, weight = text.rpartition("=")
    if not sep:
        return {"name": text, "weight": 1.0}
    try:
        return {"name": name, "weight": float(weight)}
    except ValueError as exc:
        raise ConfigError(f"--reward: the weight of {name!r} must be a number, got {weight!r}") from exc


def grpo_from_args(args: argparse.Namespace) -> GRPORun:
    """The ``GRPORun`` the flags describe (pydantic validates it)."""
    trainer = {
        "learning_rate": args.lr,
        "prompts_per_step": args.prompts_per_step,
        "num_generations": args.num_generations,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "beta": args.beta,
        "epsilon": args.epsilon,
        "epsilon_high": args.epsilon_high,
        "scale_rewards": args.scale_rewards,
        "loss_type": args.loss_type,
        "num_iterations": args.num_iterations,
        "mask_truncated_completions": args.mask_truncated,
        "rewards": [reward_spec(r) for r in args.reward or ["correctness"]],
        "seed": args.seed,
        "save_rollout_trajectories": args.save_rollout_trajectories,
        "lora": lora_from_args(args),
        "use_unsloth": args.use_unsloth,
        "distributed": distributed_from_args(args),
    }
    return GRPORun.model_validate({**common_fields(args, "grpo"), "trainer": trainer})


GRPO_CLI = TrainerCLI(
    help="group relative policy optimisation", add_arguments=add_grpo_arguments, build_config=grpo_from_args
)
