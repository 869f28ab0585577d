"""The ``model/`` part of a checkpoint: what to write for a model (full or LoRA), and loading it back.

A checkpoint's ``model/`` folder loads with ``from_pretrained`` (or ``PeftModel``) on its own:
full weights in ``model.safetensors`` with ``config.json``, or a LoRA adapter in
``adapter_model.safetensors`` with ``adapter_config.json``; plus the tokenizer files, the
generation config, and ``relaytrain_model.json`` naming the base model and its seed (so an
adapter can find its base; ``tiny`` is rebuilt from the seed).

Public API:

- ``model_files(model, tokenizer, *, base_model, seed, tokenizer_cache)``: checkpoint
  entries (relative path → tensors dict, JSON object or bytes) for ``CheckpointManager.save``.
- ``weights_entry(model)``: which entry holds the weights (full or adapter).
- ``load_model_weights(model, tensors, where)``: put those weights (as loaded by
  ``relaytrain.checkpoint.load_checkpoint``) into a live model of the same shape, exactly.
- ``unique_tensors(model)``: the state dict without tied duplicates, as a full-weights file holds it.
- ``is_lora(model)``.
"""

from __future__ import annotations

import enum
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from relaytrain.errors import CheckpointError
from relaytrain.train.tiny import MODEL_META_FILE

FULL_WEIGHTS = "model.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def weights_entry(model: Any) -> str:
    """The checkpoint entry holding ``model``'s weights: ``model/adapter_model.safetensors``
    for a LoRA model, else ``model/model.safetensors``."""
    return f"model/{ADAPTER_WEIGHTS if is_lora(model) else FULL_WEIGHTS}"


def is_lora(model: Any) -> bool:
    """True for a peft-wrapped model (only its adapter is trained and saved)."""
    return hasattr(model, "peft_config")


def unique_tensors(model: Any) -> dict[str, Any]:
    """The state dict without tied duplicates (``lm_head.weight`` when tied to the embeddings)."""
    seen: set[int] = set()
    tensors = {}
    for name, tensor in model.state_dict().items():
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:
            continue
        seen.add(pointer)
        tensors[name] = tensor.detach()
    return tensors


def _tokenizer_files(tokenizer: Any) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory(prefix="relay-tokenizer-") as tmp:
        tokenizer.save_pretrained(tmp)
        return {
            f"model/{p.relative_to(tmp).as_posix()}": p.read_bytes()
            for p in sorted(Path(tmp).rglob("*"))
            if p.is_file()
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value  # peft's task and peft types
    return value


def model_files(
    model: Any, tokenizer: Any, *, base_model: str, seed: int, tokenizer_cache: dict[str, Any] | None = None,
    weights: bool = True,
) -> dict[str, Any]:
    """The ``model/…`` entries of a checkpoint for ``CheckpointManager.save``.

    Values are live tensors (an asynchronous save copies them to host memory itself), JSON
    objects and bytes. ``base_model`` and ``seed`` go into ``relaytrain_model.json``.
    ``tokenizer_cache`` (any dict the caller keeps) avoids re-serialising the unchanging
    tokenizer at every save. ``weights=False`` leaves the weights out (a sharded checkpoint
    holds them in ``dcp/``): only the configs and the tokenizer.
    """
    meta = {"base_model": base_model, "seed": seed, "lora": is_lora(model), "format": 1}
    files: dict[str, Any] = {f"model/{MODEL_META_FILE}": meta}
    cache = {} if tokenizer_cache is None else tokenizer_cache
    if "files" not in cache:
        cache["files"] = _tokenizer_files(tokenizer)
    files.update(cache["files"])
    if is_lora(model):
        from peft import get_peft_model_state_dict

        adapter = {k: v.detach() for k, v in get_peft_model_state_dict(model).items()}
        config = _jsonable(model.peft_config["default"].to_dict())
        config["base_model_name_or_path"] = base_model
        config["inference_mode"] = True
        files[f"model/{ADAPTER_WEIGHTS}"] = adapter
        files["model/adapter_config.json"] = config
        return files
    if weights:
        files[f"model/{FULL_WEIGHTS}"] = unique_tensors(model)
    files["model/config.json"] = json.loads(model.config.to_json_string())
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        files["model/generation_config.json"] = json.loads(generation.to_json_string())
    return files


def load_model_weights(model: Any, tensors: Mapping[str, Any], where: str = "checkpoint") -> None:
    """Put checkpoint weights into ``model``, exactly.

    ``tensors`` is the content of ``model/adapter_model.safetensors`` for a LoRA model, else
    of ``model/model.safetensors``, where only tied duplicates may be missing. Raises
    ``CheckpointError`` (naming ``where``) when the names or shapes do not match.
    """
    import torch

    if is_lora(model):
        from peft import set_peft_model_state_dict

        expected = set(get_adapter_names(model))
        if set(tensors) != expected:
            raise CheckpointError(
                f"{where}: the adapter does not match the model "
                f"(missing {sorted(expected - set(tensors))[:5]}, unexpected {sorted(set(tensors) - expected)[:5]})"
            )
        set_peft_model_state_dict(model, dict(tensors))
        return
    tied = set(model.state_dict()) - set(unique_tensors(model))
    try:
        with torch.no_grad():
            result = model.load_state_dict(dict(tensors), strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise CheckpointError(f"{where}: weights do not fit the model: {exc}") from exc
    missing = set(result.missing_keys) - tied
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{where}: weights do not match the model (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(result.unexpected_keys)[:5]})"
        )


def get_adapter_names(model: Any) -> list[str]:
    """The tensor names of a LoRA model's saved adapter."""
    from peft import get_peft_model_state_dict

    return list(get_peft_model_state_dict(model))
