"""The built-in SFT trainer: causal-LM fine-tuning with the loss on completion tokens only.

Usage (the worker and ``python -m relaytrain.train sft`` do this for you)::

    from relaytrain.config import SFTRun
    from relaytrain.contract import Contract
    from relaytrain.train.sft import run_sft
    config = SFTRun(run_id="arith", kind="sft", max_steps=400)
    exit_code = run_sft(config, Contract.local("runs/arith/checkpoints"))

Full fine-tune or LoRA (peft), AdamW, constant/linear/cosine schedules with warmup, gradient
accumulation and clipping, fp32 on CPU and bf16 autocast on CUDA. Every
``checkpoint.every_steps`` steps, at ``max_steps`` and when asked to stop (stop file,
SIGTERM), the full state is checkpointed: model (or adapter), optimizer, scheduler, data
cursor, RNG. Resuming from ``contract.resume_from`` at step N and training to M gives the
same weights and optimizer state, bit for bit on CPU, as training straight to M.

Public API: ``run_sft(config, contract) -> int``, ``SFTSession`` (the training state, for
tests and tools), ``tokenize_samples``, ``collate`` and, re-exported, ``evaluate_exact_match``
and (from ``session``, shared with the GRPO trainer) ``make_scheduler``, ``config_hash`` and
``quiet_transformers``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relaytrain.config import SFTRun
from relaytrain.contract import Contract, ExitCode
from relaytrain.errors import ConfigError
from relaytrain.train.data import DataCursor, load_examples
from relaytrain.train.distributed import DistContext, clip_grad_norm
from relaytrain.train.exact_match import evaluate_exact_match
from relaytrain.train.session import (
    checkpoint_entries,
    config_hash,
    init_source,
    load_policy,
    load_verified,
    log_end,
    make_optimizer,
    make_scheduler,
    open_manager,
    pad_token_id,
    quiet_transformers,
    restore,
    resume,
    train_steps,
)
from relaytrain.train.sharded import save_checkpoint
from relaytrain.train.templates import Sample, render_all
from relaytrain.train.tracking import Trackers, open_trackers

__all__ = [
    "SFTSession",
    "collate",
    "config_hash",
    "evaluate_exact_match",
    "make_scheduler",
    "quiet_transformers",
    "run_sft",
    "tokenize_samples",
]

log = logging.getLogger(__name__)
REPORT_INTERVAL_S = 0.5
"""Progress lines are at most this often (plus at every checkpoint and the last step)."""


def tokenize_samples(samples: Sequence[Sample], tokenizer: Any, max_length: int) -> list[tuple[list[int], int]]:
    """Each sample as ``(token ids, prompt length)``: prompt tokens, completion tokens, EOS.

    Sequences longer than ``max_length`` are cut on the right.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("model: the tokenizer has no end-of-sequence token")
    encoded = []
    for flag in (True, False):
        chosen = [i for i, s in enumerate(samples) if s.add_special_tokens is flag]
        if not chosen:
            continue
        prompts = tokenizer([samples[i].prompt for i in chosen], add_special_tokens=flag)["input_ids"]
        completions = tokenizer([samples[i].completion for i in chosen], add_special_tokens=False)["input_ids"]
        encoded.extend(zip(chosen, prompts, completions, strict=True))
    encoded.sort(key=lambda item: item[0])
    return [((p + c + [eos])[:max_length], min(len(p), max_length)) for _, p, c in encoded]


def collate(rows: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, Any]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt and padding)."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, prompt_len) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
        labels[row, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def check_distributed(dist: DistContext, batch_size: int, lora: bool) -> None:
    """``ConfigError`` for what several ranks cannot train: a batch that does not split evenly, LoRA on FSDP."""
    if not dist.enabled:
        return
    dist.check_divisible(batch_size, "trainer.batch_size")
    if lora and dist.sharded:
        raise ConfigError("trainer.lora: LoRA is not supported with trainer.distributed.strategy 'fsdp' yet; "
                          "use strategy 'ddp' (the adapter is small) or drop trainer.lora")


class SFTSession:
    """Everything a resume needs: model, optimizer, scheduler, data cursor, step, RNG.

    ``device`` defaults to ``cuda`` when available, else ``cpu`` (bit-exact resume is a CPU
    guarantee; GPU kernels such as attention backward need not be deterministic).

    ``checkpoint_state()`` gives the entries of one checkpoint; ``load_checkpoint(folder)``
    restores them into a session built from the same config.
    """

    def __init__(self, config: SFTRun, contract: Contract, device: str | None = None) -> None:
        from relaytrain.config.distributed import plan_for
        from relaytrain.train.distributed import setup
        from relaytrain.train.rng import seed_everything

        self.config, self.contract, trainer = config, contract, config.trainer
        self.max_steps = contract.max_steps or config.max_steps
        self.dist = setup(plan_for(config), device)
        self.device = self.dist.device
        check_distributed(self.dist, trainer.batch_size, trainer.lora is not None)
        seed_everything(trainer.seed)
        examples = load_examples(config.data, "train")  # a missing dataset fails before the model loads
        self.base_model = init_source(config, contract)
        model, self.tokenizer = load_policy(self.base_model, trainer)
        self.model = model.to(self.device)
        self.model.train()
        self.train_model = self.dist.wrap(self.model)
        """What forward and backward run on: ``model``, or its DDP wrapper (FSDP2 shards ``model`` in place)."""
        self.optimizer = make_optimizer(self.model, trainer.learning_rate, trainer.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, trainer.schedule, trainer.warmup_steps, self.max_steps)
        samples = render_all(examples, config.data.template, self.tokenizer)
        max_length = min(int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048), 8192)
        self.rows = tokenize_samples(samples, self.tokenizer, max_length)
        self.cursor = DataCursor(len(self.rows), config.data.seed)
        self.step = 0
        self.tokens_seen = 0
        self.last_metrics: dict[str, Any] = {}
        self._tokenizer_cache: dict[str, Any] = {}

    # -- one step ---------------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``batch_size × grad_accum_steps`` examples; returns its metrics."""
        import torch

        trainer = self.config.trainer
        micro = [self.cursor.next_indices(trainer.batch_size) for _ in range(trainer.grad_accum_steps)]
        targets = sum(len(self.rows[i][0]) - self.rows[i][1] for batch in micro for i in batch)
        denominator = max(1, targets)
        total_loss, tokens = 0.0, 0
        self.optimizer.zero_grad(set_to_none=True)
        dist = self.dist
        for number, indices in enumerate(micro, start=1):
            padded = collate([self.rows[i] for i in dist.shard(indices)], pad_token_id(self.tokenizer))
            batch = {k: v.to(self.device) for k, v in padded.items()}
            with (dist.grad_sync(self.train_model, number == len(micro)),
                  torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")):
                logits = self.train_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                loss_sum = torch.nn.functional.cross_entropy(
                    logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                    batch["labels"][:, 1:].reshape(-1),
                    ignore_index=-100,
                    reduction="sum",
                )
                loss = loss_sum / denominator
                (loss * dist.loss_scale if dist.enabled else loss).backward()  # N ×: undoes the ranks' mean
            total_loss += loss_sum.item()
            tokens += int(batch["attention_mask"].sum().item())
        if dist.enabled:  # rank 0 reports the global loss and tokens
            total_loss, summed_tokens = dist.all_sum([total_loss, tokens])
            tokens = int(summed_tokens)
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = trainer.max_grad_norm if trainer.max_grad_norm is not None else math.inf
        grad_norm = clip_grad_norm(params, max_norm)  # the global norm, on every rank
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.tokens_seen += tokens
        return {"loss": total_loss / denominator, "lr": lr, "grad_norm": grad_norm, "tokens": tokens}

    # -- checkpoint state -------------------------------------------------------------------

    def checkpoint_state(self) -> dict[str, Any]:
        """The entries of a checkpoint at the current step (DESIGN §5), live tensors included."""
        return checkpoint_entries(self, "sft", self.counters())

    def counters(self) -> dict[str, Any]:
        """The SFT trainer's own fields of ``trainer_state.json``."""
        return {"tokens_seen": self.tokens_seen}

    def load_checkpoint(self, folder: str | Path) -> None:
        """Verify and restore a checkpoint written by ``checkpoint_state``."""
        folder = Path(folder)
        loaded = load_verified(folder, "sft")  # hashes every file against the manifest first
        state = restore(self, folder, loaded, _to_device(loaded.get("optimizer.pt"), self.device))
        self.tokens_seen = int(state.get("tokens_seen", 0))


def _to_device(value: Any, device: Any) -> Any:
    """``value`` with every tensor moved to ``device`` (optimizer state onto the GPU)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device) if device.type != "cpu" else value
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    return value


def run_sft(config: SFTRun, contract: Contract, device: str | None = None) -> int:
    """Train ``config`` under ``contract`` to the target step; return the exit code (0).

    ``device``: ``cuda`` when available unless named (``"cpu"``, ``"cuda:1"``).

    Resumes from ``contract.resume_from`` when set. Stops early, after a checkpoint, when the
    stop file appears or a stop was requested (the entry point turns SIGTERM into one).
    Errors propagate: the entry point maps them to exit codes (``contract.exit_code_for``).
    """
    quiet_transformers()
    session = SFTSession(config, contract, device)
    dist = session.dist
    try:
        resume(session, contract)
        policy = config.checkpoint
        meta = {"run_id": contract.run_id, "kind": "sft"}
        trackers = open_trackers(config, contract, start_step=session.step) if dist.is_main else Trackers([])
        try:
            # Rank 0 alone owns the checkpoint folder; closing waits for an asynchronous save in flight.
            with open_manager(contract, policy) if dist.is_main else contextlib.nullcontext() as manager:
                window = _Window(session, contract, trackers)

                def save() -> None:
                    window.report()  # the steps since the last progress line, when stopped between two
                    trackers.flush()  # on disk before the checkpoint is: the worker stores both then
                    save_checkpoint(session, manager, "sft", session.counters(), epoch=contract.epoch, metadata=meta)

                train_steps(session, contract, policy.every_steps, window.add, save,
                            should_stop=lambda: dist.any_rank(contract.should_stop()))
        finally:
            trackers.close()
            contract.close()
    finally:
        dist.close()
    log_end(session, contract)
    return ExitCode.OK


class _Window:
    """Metrics accumulated between two progress lines: at most every ``REPORT_INTERVAL_S``, and at checkpoints."""

    def __init__(self, session: SFTSession, contract: Contract, trackers: Trackers) -> None:
        self.session, self.contract, self.trackers = session, contract, trackers
        self.steps, self.loss, self.grad_norm, self.tokens, self.lr = 0, 0.0, 0.0, 0, 0.0
        self.started = time.monotonic()
        self.last_report = self.started

    def add(self, metrics: dict[str, float], at_checkpoint: bool) -> None:
        """Count one step's ``metrics``; report when due or ``at_checkpoint``."""
        self.steps += 1
        self.loss += metrics["loss"]
        self.grad_norm += metrics["grad_norm"]
        self.tokens += int(metrics["tokens"])
        self.lr = metrics["lr"]
        if at_checkpoint or time.monotonic() - self.last_report >= REPORT_INTERVAL_S:
            self.report()

    def report(self) -> None:
        """Write the progress line of the steps since the last one (none: nothing) and start a new window."""
        if not self.steps:
            return
        session = self.session
        now = time.monotonic()
        elapsed = max(now - self.started, 1e-9)
        session.last_metrics = {
            "loss": self.loss / self.steps,
            "lr": self.lr,
            "grad_norm": self.grad_norm / self.steps,
            "tokens_per_s": self.tokens / elapsed,
            "steps_per_s": self.steps / elapsed,
            "data_epoch": session.cursor.epoch,
            "tokens_seen": session.tokens_seen,
        }
        self.steps, self.loss, self.grad_norm, self.tokens = 0, 0.0, 0.0, 0
        self.started = self.last_report = now
        self.contract.report_progress(session.step, session.last_metrics)
        self.trackers.log(session.step, session.last_metrics)
