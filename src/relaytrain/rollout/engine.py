"""Generation engines of a rollout worker: what turns leased prompt groups into completions.

An engine is built once per manager (``load(spec)``: the model's architecture, and the LoRA
adapter the published weights are laid out for), receives each published weight version
(``set_weights(version, tensors)``) and generates groups with the version it holds
(``generate(groups, settings, version)``). Weights change only between batches: ``set_weights``
waits for the batch in hand, so a batch is sampled with one version from its first token to
its last.

Completion ``i`` of group ``g`` must be sampled with the uniforms of ``(seed, version, g, i)``
(:func:`relaytrain.train.sampling.sample_uniforms`): that is what makes a group the trainer
generated itself and one a rollout worker generated interchangeable, and a regenerated group
the same. ``TorchEngine`` is the built-in one (the trainer's own sampler, CPU or CUDA); it is the
only module of ``relaytrain.rollout`` that imports torch. Usage::

    engine = TorchEngine(threads=2)
    engine.load(info.model)
    engine.set_weights(3, tensors)                    # as the manager published version 3
    completions = engine.generate(leases, info.sampling, version=3)   # one list per group
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from relaytrain.errors import RelayError
from relaytrain.rollout.protocol import Completion, GroupLease, ModelSpec, SamplingSettings


class EngineError(RelayError):
    """The engine cannot take these weights or this request."""


class Engine(ABC):
    """What ``relay rollout-worker`` needs of an engine. Thread-safe: ``set_weights`` may be called
    from a background thread while ``generate`` runs; it takes effect after the batch in hand."""

    @abstractmethod
    def load(self, spec: ModelSpec) -> None:
        """Build the model ``spec`` describes (weights come later, by ``set_weights``)."""

    @abstractmethod
    def set_weights(self, version: int, tensors: Mapping[str, Any]) -> None:
        """Hold ``tensors`` (a published version's safetensors content) as ``version`` from the next batch on."""

    @property
    @abstractmethod
    def version(self) -> int | None:
        """The weight version held (None before the first ``set_weights``)."""

    @abstractmethod
    def generate(
        self, groups: Sequence[GroupLease], settings: SamplingSettings, version: int
    ) -> list[list[Completion]]:
        """``settings.num_generations`` completions for each group, sampled with weights ``version``
        (the version held; anything else is an ``EngineError``)."""


class TorchEngine(Engine):
    """The trainer's own sampler (:func:`relaytrain.train.sampling.sample_completions`) over a
    transformers model, on ``threads`` CPU threads or on ``device`` (default: CUDA when there is one)."""

    def __init__(self, threads: int = 1, device: str | None = None) -> None:
        import torch

        from relaytrain.train.session import pick_device

        if threads < 1:
            raise ValueError(f"threads: must be at least 1, got {threads}")
        torch.set_num_threads(threads)
        self.threads = threads
        self.device = pick_device(device)
        self._lock = threading.Lock()
        self._model: Any = None
        self._version: int | None = None
        self._tied: set[str] = set()

    @property
    def version(self) -> int | None:
        return self._version

    def load(self, spec: ModelSpec) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from relaytrain.config import LoraConfig
        from relaytrain.train.model_io import unique_tensors
        from relaytrain.train.session import with_lora

        fields = dict(spec.config)
        model_type = fields.pop("model_type", None)
        if not model_type:
            raise EngineError("model.config: has no model_type; cannot build the model")
        try:
            config = AutoConfig.for_model(model_type, **fields)
        except (ValueError, KeyError) as exc:
            raise EngineError(f"model.config: transformers cannot build a {model_type!r} config: {exc}") from exc
        dtype = _dtype(spec.config.get("dtype") or spec.config.get("torch_dtype"))  # transformers 5 / 4
        with torch.random.fork_rng(devices=[]):  # the random init is overwritten; leave the caller's RNG be
            model = AutoModelForCausalLM.from_config(config)
        model.to(dtype=dtype)
        model = with_lora(model, LoraConfig(**spec.lora) if spec.lora is not None else None)
        model.to(self.device)
        model.eval()
        with self._lock:
            self._model = model
            self._version = None
            self._tied = set(model.state_dict()) - set(unique_tensors(model))

    def set_weights(self, version: int, tensors: Mapping[str, Any]) -> None:
        import torch

        if self._model is None:
            raise EngineError("set_weights before load")
        with self._lock:
            names = set(self._model.state_dict())
            unexpected = sorted(set(tensors) - names)
            missing = sorted(names - set(tensors) - self._tied)
            if missing or unexpected:
                raise EngineError(
                    f"weights v{version} do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
                )
            try:
                with torch.no_grad():
                    self._model.load_state_dict(dict(tensors), strict=False)
            except RuntimeError as exc:  # a shape mismatch
                raise EngineError(f"weights v{version} do not fit the model: {exc}") from exc
            self._version = version

    def generate(
        self, groups: Sequence[GroupLease], settings: SamplingSettings, version: int
    ) -> list[list[Completion]]:
        from relaytrain.train.sampling import sample_completions

        if not groups:
            return []
        with self._lock:
            if self._model is None or self._version is None:
                raise EngineError("generate before load and set_weights")
            if version != self._version:
                raise EngineError(f"asked to generate with weights v{version}, holding v{self._version}")
            batch = sample_completions(
                self._model,
                [g.prompt_ids for g in groups],
                prompt_keys=[g.group_id for g in groups],
                num_generations=settings.num_generations,
                seed=settings.seed,
                step=version,
                eos_token_id=settings.eos_token_id,
                pad_token_id=settings.pad_token_id,
                max_new_tokens=settings.max_new_tokens,
                temperature=settings.temperature,
                top_p=settings.top_p,
            )
        lengths = batch.completion_lengths.tolist()
        ids, logps, truncated = batch.completion_ids.tolist(), batch.sampling_logps.tolist(), batch.truncated.tolist()
        rows = [
            Completion(token_ids=ids[r][: lengths[r]], logps=logps[r][: lengths[r]], finished=not truncated[r])
            for r in range(len(lengths))
        ]
        g = settings.num_generations
        return [rows[i * g : (i + 1) * g] for i in range(len(groups))]


    def sample_turns(self, contexts: list[list[int]], keys: list[int], settings: SamplingSettings,
                     version: int) -> list[Any]:
        """One policy turn after each context (``train.episodes.Turn``), with weights ``version``: what a
        rollout worker's episodes are played with, sampled as the trainer's episode loop samples."""
        from relaytrain.train.episodes import Turn
        from relaytrain.train.sampling import sample_completions

        with self._lock:
            if self._model is None or self._version != version:
                raise EngineError(f"asked to sample with weights v{version}, holding v{self._version}")
            batch = sample_completions(self._model, contexts, prompt_keys=keys, num_generations=1,
                                       seed=settings.seed, step=version, eos_token_id=settings.eos_token_id,
                                       pad_token_id=settings.pad_token_id, max_new_tokens=settings.max_new_tokens,
                                       temperature=settings.temperature, top_p=settings.top_p)
        lengths = batch.completion_lengths.tolist()
        return [Turn(token_ids=batch.completion_ids[i, :n].tolist(), logps=batch.sampling_logps[i, :n].tolist(),
                     finished=not bool(batch.truncated[i])) for i, n in enumerate(lengths)]

    @property
    def max_length(self) -> int:
        """The model's context length (what an episode may grow to)."""
        base = self._model.get_base_model() if hasattr(self._model, "get_base_model") else self._model
        return int(getattr(base.config, "max_position_embeddings", None) or 1 << 30)


def _dtype(name: Any) -> Any:
    """The torch dtype a config names (``"bfloat16"``, ``"torch.float16"``); float32 when it names none."""
    import torch

    if name is None:
        return torch.float32
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise EngineError(f"model.config.dtype: {name!r} is not a torch dtype")
    return dtype


_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
"""safetensors' dtype names → torch's."""


def load_tensors(data: bytes | bytearray) -> dict[str, Any]:
    """A safetensors file's tensors (CPU), as ``set_weights`` takes them: views of ``data``, not copies
    (``safetensors.torch.load`` takes only ``bytes`` and copies every tensor; a pull hands back a
    ``bytearray``, and on a 500 MB state each copy costs about a second of page faults)."""
    import json
    import struct

    import torch

    view = memoryview(data)
    try:
        (size,) = struct.unpack_from("<Q", view, 0)
        header = json.loads(bytes(view[8 : 8 + size]))
        base = 8 + size
        tensors = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype = getattr(torch, _DTYPES[entry["dtype"]])
            begin, end = entry["data_offsets"]
            if not 0 <= begin <= end <= len(view) - base:
                raise ValueError(f"{name}: data_offsets {begin}..{end} outside the file")
            flat = torch.frombuffer(view, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=base + begin) \
                if end > begin else torch.empty(0, dtype=dtype)
            tensors[name] = flat.reshape(entry["shape"])
    except (struct.error, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise EngineError(f"the weights are not a valid safetensors file: {exc}") from exc
    return tensors
