"""``relay export CHECKPOINT OUT``: a built-in trainer's checkpoint as a plain ``save_pretrained`` folder.

Usage::

    relay export runs/x/checkpoints/step_00000400 ./model-out            # full weights (or an adapter)
    relay export runs/x/checkpoints/step_00000400 ./model-out --merge-lora
    python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('./model-out')"

Any checkpoint of the built-in trainers, whatever world size wrote it: the checkpoint is verified
against its manifest first (every file, the DCP shards included); a single-format one is loaded
from its ``model/`` folder, a sharded one (FSDP, ``dcp/``) is loaded whole into the model on the
CPU (DCP reads every rank's shards into one process). Then ``save_pretrained``: ``config.json``,
``model.safetensors``, the tokenizer and the generation config. A LoRA checkpoint exports its
adapter (``adapter_config.json``, ``adapter_model.safetensors``), or with ``merge_lora`` the
merged full model. ``OUT`` is written to a temporary sibling and renamed into place; it must not
exist, or be an empty folder.

Public API: ``export_checkpoint(checkpoint, out, *, merge_lora=False) -> Path``.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from relaytrain.errors import ConfigError

log = logging.getLogger(__name__)


def export_checkpoint(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], *,
                      merge_lora: bool = False) -> Path:
    """Write the model of the verified ``checkpoint`` to ``out`` as a ``save_pretrained`` folder;
    return ``out``. ``ConfigError`` for a missing checkpoint or an ``out`` that holds files;
    ``CheckpointError`` for a checkpoint that fails verification."""
    from relaytrain.checkpoint import load_checkpoint
    from relaytrain.train.sharded import is_shard_file
    from relaytrain.train.tiny import load_model_and_tokenizer

    source, target = Path(checkpoint), Path(out)
    if not (source / "manifest.json").is_file():
        raise ConfigError(f"CHECKPOINT: {source} is not a committed checkpoint (no manifest.json)")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"OUT: {target} exists and is not an empty folder")
    load_checkpoint(source, verify_only=is_shard_file)  # every byte verified before any is used
    # A sharded checkpoint's weights are read whole from its dcp/ folder (train.tiny, as evaluation does).
    model, tokenizer = load_model_and_tokenizer(str(source), merge_lora=merge_lora)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        generation = source / "model" / "generation_config.json"
        if generation.is_file() and (tmp / "config.json").is_file():
            shutil.copyfile(generation, tmp / "generation_config.json")  # as trained, not as rebuilt
        if target.exists():
            target.rmdir()
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s to %s", source, target)
    return target
