"""``relay train`` (a built-in trainer without a commander), ``relay export`` (a checkpoint as a
``save_pretrained`` folder) and ``relay demo`` (the whole system on this machine)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def train(ctx: typer.Context) -> None:
    """Train without a commander: relay train sft|grpo --model tiny --dataset arithmetic --max-steps N
    --output-dir DIR [--resume-from auto|none|DIR] [--lora] [--use-unsloth] [--nproc-per-node N]
    [--strategy ddp|fsdp] … (relay train sft --help: every flag)."""
    from relaytrain.train.standalone import main as train_main

    raise typer.Exit(train_main(ctx.args, prog="relay train"))


# relay train hands its arguments, --help included, to the trainer's own parser.
TRAIN_SETTINGS = {"context_settings": {"allow_extra_args": True, "ignore_unknown_options": True},
                  "add_help_option": False}


def export(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint folder of a built-in trainer (step_<N>), "
                                               "from any world size: single-format or sharded (FSDP).")],
    out: Annotated[Path, typer.Argument(help="The folder to write; must not exist, or be empty.")],
    merge_lora: Annotated[bool, typer.Option("--merge-lora", help="For a LoRA checkpoint: merge the adapter "
                                             "into the base weights (default: export the adapter).")] = False,
) -> None:
    """Export a checkpoint's model as a plain save_pretrained folder (config.json, model.safetensors,
    tokenizer, generation config) that AutoModelForCausalLM.from_pretrained loads. The checkpoint is
    verified against its manifest first."""
    from relaytrain.train.export import export_checkpoint

    from .common import console

    path = export_checkpoint(checkpoint, out, merge_lora=merge_lora)
    console.print(f"exported {checkpoint} to {path}")


def demo(
    root: Annotated[Path, typer.Option(help="Folder for the demo's database, workers, checkpoints and logs.")]
    = Path("./relay-demo"),
    sft_steps: Annotated[int, typer.Option(min=10, help="SFT steps.")] = 500,
    grpo_steps: Annotated[int, typer.Option(min=10, help="GRPO steps.")] = 150,
    kill_at: Annotated[float, typer.Option(min=0.05, max=0.95, help="Kill the SFT holder at this fraction.")]
    = 0.4,
    eval_samples: Annotated[int, typer.Option(min=10, help="Held-out problems to score each model on.")] = 300,
    rollout_workers: Annotated[int, typer.Option(min=0, max=8, help="Rollout workers generating for the GRPO run "
                                                 "(its trainer then hosts a rollout manager; docs/rollout.md).")] = 0,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the commander and its dashboard up after the summary, "
                                       "until Ctrl-C.")] = False,
) -> None:
    """Run the whole system here: a commander, two workers, SFT then GRPO of a tiny model on
    2-digit addition, a worker killed mid-run, and held-out accuracy at the end (a few minutes on a CPU).
    It prints the dashboard's address (with a viewer token) as soon as the commander is up."""
    from relaytrain.demo import DemoSettings, run_demo

    from .render import DemoScreen

    settings = DemoSettings(root=root, sft_steps=sft_steps, grpo_steps=grpo_steps, kill_at=kill_at,
                            eval_samples=eval_samples, rollout_workers=rollout_workers, keep=keep)
    raise typer.Exit(run_demo(settings, DemoScreen()))
