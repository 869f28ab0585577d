"""The built-in SFT trainer: causal-LM fine-tuning with the loss on completion tokens only.

Usage (the worker and ``python -m relaytrain.train sft`` do this for you)::

    from relaytrain.config import SFTRun
    from relaytrain.train.contract import Contract
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
tests and tools), ``tokenize_samples``, ``collate``, ``make_scheduler``, ``config_hash``,
``quiet_transformers`` and, re-exported, ``evaluate_exact_match``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relaytrain.config import SFTRun
from relaytrain.errors import CheckpointError, ConfigError
from relaytrain.train.contract import EX_OK, Contract
from relaytrain.train.data import DataCursor, load_examples
from relaytrain.train.exact_match import evaluate_exact_match
from relaytrain.train.model_io import is_lora, load_model_weights, model_files, weights_entry
from relaytrain.train.templates import Sample, render_all

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
STATE_FORMAT = 1
REPORT_INTERVAL_S = 0.5
"""Progress lines are at most this often (plus at every checkpoint and the last step)."""


def config_hash(config: SFTRun) -> str:
    """sha256 of what decides the training trajectory: model, data, trainer, init_from."""
    relevant = config.model_dump(mode="json", include={"model", "data", "trainer", "init_from"})
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


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


def make_scheduler(optimizer: Any, schedule: str, warmup_steps: int, total_steps: int) -> Any:
    """A ``LambdaLR``: linear warmup over ``warmup_steps``, then constant, linear or cosine decay to 0."""
    import torch

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class SFTSession:
    """Everything a resume needs: model, optimizer, scheduler, data cursor, step, RNG.

    ``device`` defaults to ``cuda`` when available, else ``cpu`` (bit-exact resume is a CPU
    guarantee; GPU kernels such as attention backward need not be deterministic).

    ``checkpoint_state()`` gives the entries of one checkpoint; ``load_checkpoint(folder)``
    restores them into a session built from the same config.
    """

    def __init__(self, config: SFTRun, contract: Contract, device: str | None = None) -> None:
        import torch

        from relaytrain.train.rng import seed_everything
        from relaytrain.train.tiny import load_model_and_tokenizer

        self.config, self.contract, trainer = config, contract, config.trainer
        self.max_steps = contract.max_steps or config.max_steps
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        seed_everything(trainer.seed)
        examples = load_examples(config.data, "train")  # a missing dataset fails before the model loads
        self.base_model = self._init_source()
        model, self.tokenizer = load_model_and_tokenizer(self.base_model, seed=trainer.seed, merge_lora=True)
        if trainer.lora is not None:
            from peft import LoraConfig, get_peft_model

            lora = trainer.lora
            model = get_peft_model(
                model,
                LoraConfig(
                    r=lora.r,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=list(lora.target_modules),
                    task_type="CAUSAL_LM",
                ),
            )
        self.model = model.to(self.device)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=trainer.learning_rate, weight_decay=trainer.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, trainer.schedule, trainer.warmup_steps, self.max_steps)
        samples = render_all(examples, config.data.template, self.tokenizer)
        max_length = min(int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048), 8192)
        self.rows = tokenize_samples(samples, self.tokenizer, max_length)
        self.cursor = DataCursor(len(self.rows), config.data.seed)
        self.step = 0
        self.tokens_seen = 0
        self.last_metrics: dict[str, Any] = {}
        self._tokenizer_cache: dict[str, Any] = {}

    def _init_source(self) -> str:
        """The model the run starts from: ``RELAY_INIT_FROM``, ``init_from.path`` or ``model``."""
        if self.contract.init_from:
            return self.contract.init_from
        init = self.config.init_from
        if init is not None and init.path is not None:
            return init.path
        if init is not None and init.run is not None:
            raise ConfigError(f"init_from.run: {init.run!r} needs the worker to set RELAY_INIT_FROM")
        return self.config.model

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
        for indices in micro:
            batch = {k: v.to(self.device) for k, v in collate([self.rows[i] for i in indices], self._pad_id).items()}
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss_sum = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                batch["labels"][:, 1:].reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            (loss_sum / denominator).backward()
            total_loss += loss_sum.item()
            tokens += int(batch["attention_mask"].sum().item())
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = trainer.max_grad_norm if trainer.max_grad_norm is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.tokens_seen += tokens
        return {"loss": total_loss / denominator, "lr": lr, "grad_norm": grad_norm, "tokens": tokens}

    @property
    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    # -- checkpoint state -------------------------------------------------------------------

    def checkpoint_state(self) -> dict[str, Any]:
        """The entries of a checkpoint at the current step (DESIGN §5), live tensors included."""
        from relaytrain.train.rng import capture_rng_state

        state = model_files(
            self.model,
            self.tokenizer,
            base_model=self.base_model,
            seed=self.config.trainer.seed,
            tokenizer_cache=self._tokenizer_cache,
        )
        state["optimizer.pt"] = self.optimizer.state_dict()
        state["scheduler.pt"] = self.scheduler.state_dict()
        state["trainer_state.json"] = {
            "format": STATE_FORMAT,
            "kind": "sft",
            "run_id": self.contract.run_id,
            "lease_epoch": self.contract.epoch,
            "step": self.step,
            "max_steps": self.max_steps,
            "data_epoch": self.cursor.epoch,
            "cursor": self.cursor.state_dict(),
            "tokens_seen": self.tokens_seen,
            "rng": capture_rng_state(),
            "config_hash": config_hash(self.config),
            "lora": is_lora(self.model),
            "base_model": self.base_model,
            "metrics": self.last_metrics,
        }
        return state

    def load_checkpoint(self, folder: str | Path) -> None:
        """Verify and restore a checkpoint written by ``checkpoint_state``."""
        from relaytrain.checkpoint import load_checkpoint
        from relaytrain.train.rng import restore_rng_state

        folder = Path(folder)
        loaded = load_checkpoint(folder)  # hashes every file against the manifest first
        state = loaded.get("trainer_state.json")
        if not isinstance(state, dict) or state.get("kind") != "sft" or state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{folder}: not an SFT checkpoint of format {STATE_FORMAT}")
        if bool(state.get("lora")) != is_lora(self.model):
            raise ConfigError(
                f"trainer.lora: the checkpoint {folder} was trained {'with' if state.get('lora') else 'without'} "
                "LoRA; the config must match to resume"
            )
        if state.get("config_hash") != config_hash(self.config):
            log.warning("resuming %s with a changed model/data/trainer config", folder)
        entry = weights_entry(self.model)
        if entry not in loaded:
            raise CheckpointError(f"{folder}: no {entry}")
        load_model_weights(self.model, loaded[entry], f"{folder}/{entry}")
        self.optimizer.load_state_dict(_to_device(loaded["optimizer.pt"], self.device))
        self.scheduler.load_state_dict(loaded["scheduler.pt"])
        self.cursor.load_state_dict(state["cursor"])
        self.step = int(state["step"])
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.last_metrics = dict(state.get("metrics") or {})
        restore_rng_state(state["rng"])


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
    from relaytrain.checkpoint import CheckpointManager

    quiet_transformers()
    session = SFTSession(config, contract, device)
    extra = {"run_id": contract.run_id, "epoch": contract.epoch}
    if contract.resume_from is not None:
        session.load_checkpoint(contract.resume_from)
        contract.report_event("resumed", step=session.step, path=str(Path(contract.resume_from).resolve()))
        log.info("resumed from %s at step %d", contract.resume_from, session.step, extra=extra)
    policy = config.checkpoint
    meta = {"run_id": contract.run_id, "kind": "sft"}
    saved_step = session.step if contract.resume_from is not None else None
    try:
        with CheckpointManager(  # closing waits for an asynchronous save in flight
            contract.output_dir,
            async_save=policy.async_save,
            keep_last=policy.keep_last,
            keep_every=policy.keep_every,
            on_commit=lambda path, step: contract.report_checkpoint(step, path),
        ) as manager:
            window = _Window()
            while session.step < session.max_steps and not contract.should_stop():
                window.add(session.train_step())
                boundary = session.step % policy.every_steps == 0 or session.step == session.max_steps
                if boundary or window.due():
                    session.last_metrics = window.flush(session)
                    contract.report_progress(session.step, session.last_metrics)
                if boundary:
                    manager.save(session.checkpoint_state(), session.step, epoch=contract.epoch, metadata=meta)
                    saved_step = session.step
            if saved_step != session.step and session.step > 0:  # stopped between two checkpoints
                if window.steps:
                    session.last_metrics = window.flush(session)
                    contract.report_progress(session.step, session.last_metrics)
                manager.save(session.checkpoint_state(), session.step, epoch=contract.epoch, metadata=meta)
    finally:
        contract.close()
    if contract.stop_reason is not None:
        log.info("stopped at step %d (%s)", session.step, contract.stop_reason, extra=extra)
    else:
        log.info("finished at step %d", session.step, extra=extra)
    return EX_OK


class _Window:
    """Metrics accumulated between two progress lines."""

    def __init__(self) -> None:
        self.steps, self.loss, self.grad_norm, self.tokens, self.lr = 0, 0.0, 0.0, 0, 0.0
        self.started = time.monotonic()
        self.last_report = self.started

    def add(self, metrics: dict[str, float]) -> None:
        self.steps += 1
        self.loss += metrics["loss"]
        self.grad_norm += metrics["grad_norm"]
        self.tokens += int(metrics["tokens"])
        self.lr = metrics["lr"]

    def due(self) -> bool:
        return time.monotonic() - self.last_report >= REPORT_INTERVAL_S

    def flush(self, session: SFTSession) -> dict[str, Any]:
        now = time.monotonic()
        elapsed = max(now - self.started, 1e-9)
        metrics = {
            "loss": self.loss / max(1, self.steps),
            "lr": self.lr,
            "grad_norm": self.grad_norm / max(1, self.steps),
            "tokens_per_s": self.tokens / elapsed,
            "steps_per_s": self.steps / elapsed,
            "data_epoch": session.cursor.epoch,
            "tokens_seen": session.tokens_seen,
        }
        self.steps, self.loss, self.grad_norm, self.tokens = 0, 0.0, 0.0, 0
        self.started = self.last_report = now
        return metrics


def quiet_transformers() -> None:
    """No progress bars or advisory warnings from transformers in a trainer's logs (entry points)."""
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


_quiet_transformers = quiet_transformers  # the name the GRPO trainer imports
