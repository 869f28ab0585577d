"""What the built-in trainers (``sft``, ``grpo``) share: set-up, checkpoint state, resume, the step loop.

Each trainer keeps a session class with the same core attributes — ``config``, ``contract``,
``device``, ``base_model``, ``model``, ``tokenizer``, ``optimizer``, ``scheduler``, ``cursor``,
``step``, ``max_steps``, ``last_metrics`` and ``_tokenizer_cache`` — and a ``train_step()``; the
functions here work on those and leave the rest (what one step does, its metrics, what else a
checkpoint holds) to the trainer.

Public API: ``config_hash``, ``make_scheduler``, ``quiet_transformers`` (re-exported by ``sft``),
``STATE_FORMAT``, ``pick_device``, ``init_source``, ``load_policy``, ``with_lora``, ``make_optimizer``,
``pad_token_id``, ``load_verified``, ``checkpoint_entries``, ``restore``, ``open_manager``, ``resume``, ``log_end``,
``train_steps``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relaytrain.config import CheckpointPolicy, GRPORun, GRPOTrainer, LoraConfig, SFTRun, SFTTrainer
from relaytrain.contract import Contract
from relaytrain.errors import CheckpointError, ConfigError
from relaytrain.train.model_io import is_lora, model_files

log = logging.getLogger(__name__)
STATE_FORMAT = 1
"""The ``format`` of ``trainer_state.json`` both trainers write and accept."""
CHECKPOINT_NAMES = {"sft": "an SFT", "grpo": "a GRPO"}
"""How an error message names a checkpoint of each ``kind``."""


def config_hash(config: SFTRun | GRPORun) -> str:
    """sha256 of what decides the training trajectory: model, data, trainer, init_from."""
    relevant = config.model_dump(mode="json", include={"model", "data", "trainer", "init_from"})
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


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


def quiet_transformers() -> None:
    """No progress bars or advisory warnings from transformers in a trainer's logs (entry points)."""
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


# -- set-up ---------------------------------------------------------------------------------


def pick_device(name: str | None = None) -> Any:
    """The ``torch.device`` named, else ``cuda`` when available, else ``cpu``."""
    import torch

    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def init_source(config: SFTRun | GRPORun, contract: Contract) -> str:
    """The model the run starts from: ``RELAY_INIT_FROM``, ``init_from.path`` or ``model``."""
    if contract.init_from:
        return contract.init_from
    init = config.init_from
    if init is not None and init.path is not None:
        return init.path
    if init is not None and init.run is not None:
        raise ConfigError(f"init_from.run: {init.run!r} needs the worker to set RELAY_INIT_FROM")
    return config.model


def load_policy(source: str, trainer: SFTTrainer | GRPOTrainer) -> tuple[Any, Any]:
    """The model to train and its tokenizer: ``source`` loaded (LoRA adapters merged), then wrapped
    in a fresh adapter when ``trainer.lora`` is set; through unsloth with ``trainer.use_unsloth``."""
    if trainer.use_unsloth:
        return _load_with_unsloth(source, trainer)
    from relaytrain.train.tiny import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(source, seed=trainer.seed, merge_lora=True)
    return with_lora(model, trainer.lora), tokenizer


def _load_with_unsloth(source: str, trainer: SFTTrainer | GRPOTrainer) -> tuple[Any, Any]:
    """unsloth's ``FastLanguageModel`` (fp weights, no quantisation) and, with LoRA, its adapter.

    A missing or unusable unsloth is a ``ConfigError`` (a permanent failure at start) naming it."""
    from relaytrain.train.tiny import TINY_MODEL, model_folder

    if source == TINY_MODEL:
        raise ConfigError("trainer.use_unsloth: unsloth loads a model folder or hub id, not the built-in 'tiny' "
                          "model; drop --use-unsloth for it")
    try:
        from unsloth import FastLanguageModel
    except ImportError as exc:
        raise ConfigError(f"trainer.use_unsloth: unsloth is not installed ({exc}); install it on a machine with an "
                          "NVIDIA GPU (pip install unsloth) or drop --use-unsloth") from None
    except Exception as exc:  # unsloth refuses to import without a supported GPU
        raise ConfigError(f"trainer.use_unsloth: unsloth cannot be used here: {type(exc).__name__}: {exc}") from None
    path = Path(source)
    name = str(model_folder(path)) if path.exists() else source
    model, tokenizer = FastLanguageModel.from_pretrained(model_name=name, max_seq_length=2048, dtype=None,
                                                         load_in_4bit=False)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lora = trainer.lora
    if lora is not None:
        model = FastLanguageModel.get_peft_model(model, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=list(lora.target_modules), bias="none",
                                                 random_state=trainer.seed)
    return model, tokenizer


def with_lora(model: Any, lora: LoraConfig | None) -> Any:
    """``model`` wrapped in a fresh LoRA adapter (peft), or as it is when ``lora`` is None."""
    if lora is None:
        return model
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    return get_peft_model(
        model,
        PeftLoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            task_type="CAUSAL_LM",
        ),
    )


def make_optimizer(model: Any, learning_rate: float, weight_decay: float) -> Any:
    """AdamW over the parameters of ``model`` that require grad (the adapter only, with LoRA)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    # One fused kernel per step where torch has one (CPU and CUDA floats): 2.7 → 0.7 ms a step
    # for the tiny model on one CPU thread, against the per-parameter loop.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay, fused=fused or None)


def pad_token_id(tokenizer: Any) -> int:
    """The padding token (EOS when the tokenizer has none)."""
    pad = tokenizer.pad_token_id
    return pad if pad is not None else tokenizer.eos_token_id


# -- checkpoint state -----------------------------------------------------------------------


def load_verified(folder: str | Path, kind: str) -> dict[str, Any]:
    """Every file of a ``kind`` checkpoint (``sft``, ``grpo``), hashed against its manifest first
    (a sharded checkpoint's ``dcp/`` files are hashed too, and left for ``restore`` to read)."""
    from relaytrain.checkpoint import load_checkpoint
    from relaytrain.train.sharded import is_shard_file

    loaded = load_checkpoint(folder, verify_only=is_shard_file)
    state = loaded.get("trainer_state.json")
    if not isinstance(state, dict) or state.get("kind") != kind or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{folder}: not {CHECKPOINT_NAMES[kind]} checkpoint of format {STATE_FORMAT}")
    return loaded


def checkpoint_entries(
    session: Any, kind: str, counters: dict[str, Any], extra_files: dict[str, Any] | None = None,
    sharded: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The entries of a checkpoint at ``session``'s step (DESIGN §5), live tensors included (an
    asynchronous save copies them to host memory itself): the model, optimizer, scheduler,
    ``extra_files`` and ``trainer_state.json``, where ``counters`` (the trainer's own fields)
    stand beside the step, data cursor and RNG.

    ``sharded`` (``{"strategy": "fsdp", "world_size": N}``): the weights and optimizer state are
    in the checkpoint's ``dcp/`` folder (``train.sharded``), so they are left out here and
    ``trainer_state.json`` says so."""
    from relaytrain.train.rng import capture_rng_state

    state = model_files(
        session.model,
        session.tokenizer,
        base_model=session.base_model,
        seed=session.config.trainer.seed,
        tokenizer_cache=session._tokenizer_cache,
        weights=sharded is None,
    )
    if sharded is None:
        state["optimizer.pt"] = session.optimizer.state_dict()
    state["scheduler.pt"] = session.scheduler.state_dict()
    state.update(extra_files or {})
    state["trainer_state.json"] = {
        "format": STATE_FORMAT,
        "kind": kind,
        "run_id": session.contract.run_id,
        "lease_epoch": session.contract.epoch,
        "step": session.step,
        "max_steps": session.max_steps,
        "data_epoch": session.cursor.epoch,
        "cursor": session.cursor.state_dict(),
        **counters,
        "rng": capture_rng_state(),
        "config_hash": config_hash(session.config),
        "lora": is_lora(session.model),
        "base_model": session.base_model,
        "metrics": session.last_metrics,
    }
    if sharded is not None:
        state["trainer_state.json"]["sharded"] = sharded
    return state


def restore(session: Any, folder: Path, loaded: dict[str, Any], optimizer_state: Any) -> dict[str, Any]:
    """Put a verified checkpoint (``load_verified``) into ``session``: weights, ``optimizer_state``,
    scheduler, data cursor, step, metrics, RNG. Returns its ``trainer_state.json`` for the
    trainer's own fields.

    Any checkpoint loads into any world size (``train.sharded.load_weights_and_optimizer``): a
    sharded one (``dcp/``) is resharded, a single-format one is sharded when this session's model
    is. Every rank restores the RNG state the checkpoint holds (rank 0's)."""
    from relaytrain.train.rng import restore_rng_state

    state = loaded["trainer_state.json"]
    if bool(state.get("lora")) != is_lora(session.model):
        raise ConfigError(
            f"trainer.lora: the checkpoint {folder} was trained {'with' if state.get('lora') else 'without'} "
            "LoRA; the config must match to resume"
        )
    if state.get("config_hash") != config_hash(session.config):
        log.warning("resuming %s with a changed model/data/trainer config", folder)
    from relaytrain.train.sharded import load_weights_and_optimizer

    load_weights_and_optimizer(session.model, session.optimizer, folder, loaded, optimizer_state)
    session.scheduler.load_state_dict(loaded["scheduler.pt"])
    session.cursor.load_state_dict(state["cursor"])
    session.step = int(state["step"])
    session.last_metrics = dict(state.get("metrics") or {})
    restore_rng_state(state["rng"])
    return state


# -- the run --------------------------------------------------------------------------------


def open_manager(contract: Contract, policy: CheckpointPolicy) -> Any:
    """The ``CheckpointManager`` of a run: ``policy``'s retention, commits reported to ``contract``."""
    from relaytrain.checkpoint import CheckpointManager

    return CheckpointManager(
        contract.output_dir,
        async_save=policy.async_save,
        keep_last=policy.keep_last,
        keep_every=policy.keep_every,
        on_commit=lambda path, step: contract.report_checkpoint(step, path),
    )


def resume(session: Any, contract: Contract) -> None:
    """Load ``contract.resume_from`` into ``session`` when set, and report it."""
    if contract.resume_from is None:
        return
    session.load_checkpoint(contract.resume_from)
    contract.report_event("resumed", step=session.step, path=str(Path(contract.resume_from).resolve()))
    extra = {"run_id": contract.run_id, "epoch": contract.epoch}
    log.info("resumed from %s at step %d", contract.resume_from, session.step, extra=extra)


def log_end(session: Any, contract: Contract) -> None:
    """The trainer's last log line: stopped (and why) or finished, at which step."""
    extra = {"run_id": contract.run_id, "epoch": contract.epoch}
    if contract.stop_reason is not None:
        log.info("stopped at step %d (%s)", session.step, contract.stop_reason, extra=extra)
    else:
        log.info("finished at step %d", session.step, extra=extra)


def train_steps(
    session: Any,
    contract: Contract,
    every_steps: int,
    report: Callable[[Any, bool], None],
    save: Callable[[], None],
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Call ``session.train_step()`` until ``max_steps`` or a stop request.

    After each step ``report(what train_step returned, at_checkpoint)``, then ``save()`` every
    ``every_steps`` steps and at ``max_steps``; once more at the end when stopped between two
    checkpoints (not when nothing was trained since the start or the resume). ``should_stop``
    (default ``contract.should_stop``) is asked before each step: with several ranks, whether any
    rank was asked (``DistContext.any_rank``), so that all stop at the same step.
    """
    saved_step = session.step if contract.resume_from is not None else None
    stop = should_stop or contract.should_stop
    while session.step < session.max_steps and not stop():
        result = session.train_step()
        boundary = session.step % every_steps == 0 or session.step == session.max_steps
        report(result, boundary)
        if boundary:
            save()
            saved_step = session.step
    if saved_step != session.step and session.step > 0:  # stopped between two checkpoints
        save()
