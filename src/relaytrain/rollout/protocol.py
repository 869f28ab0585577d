"""The rollout manager's HTTP API: paths and wire types, shared by the manager (in the GRPO
trainer) and ``relay rollout-worker``. Torch-free.

Every request carries ``Authorization: Bearer <secret>``, the secret the trainer announced to the
commander (a rollout worker reads it from ``GET /api/v1/runs/{id}/rollout`` with its ``rollout``
token). Errors are ``{"detail": "..."}`` with 401 (no or wrong secret), 404 (unknown worker or
group), 409 (late, stale, already accepted, wrong version; on ``GET /weights``: no weights published
yet, wait and retry), 410 (weights version no longer held), 422 (malformed body, naming the field),
503 (the manager is shutting down).

A session, as the rollout worker runs it::

    GET  {PREFIX}/info                              -> ManagerInfo (model config, sampling settings)
    POST {PREFIX}/workers                           RegisterWorker -> Registered
    GET  {PREFIX}/weights                           -> WeightsManifest of the latest version
    GET  {PREFIX}/weights/{version}/chunks/{index}  -> raw bytes (``X-Sha256`` header)
    POST {PREFIX}/groups/lease                      LeaseRequest -> LeaseResponse
    POST {PREFIX}/groups/{group_id}/result          GroupResult -> ResultAck
    POST {PREFIX}/groups/results                    GroupResults -> BatchAck (a batch's results, one round trip)
    POST {PREFIX}/groups/{group_id}/release         ReleaseGroup -> ResultAck (re-queued)
    POST {PREFIX}/workers/{worker_id}/heartbeat     WorkerHeartbeat -> Registered
    DELETE {PREFIX}/workers/{worker_id}             -> its groups re-queued

Weights are verified chunk by chunk: a client checks that the manifest's chunks tile the file
exactly (offsets contiguous from 0, lengths summing to ``total_bytes``) and that each chunk's bytes
hash to its ``sha256`` (also sent as the ``X-Sha256`` header) before it uses any of them; together
these cover every byte once. The manifest's whole-file ``sha256`` is informational (for a copy kept
elsewhere); a pull does not spend a second pass over the file on it.

Group ``g`` is the ``g``-th prompt of the run's data order (the same across resumes). A lease
carries an ``attempt`` number (like a run's epoch): a result is accepted only for the group's
current attempt, once. Completion ``i`` of a group is sampled with the uniforms of
``(seed, version, group_id, i)`` (``relaytrain.train.sampling.sample_uniforms``), so a group
regenerated at the same version gives the same tokens.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

PREFIX = "/rollout/v1"
WORKER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
CHUNK_SHA256_HEADER = "X-Sha256"
VERSION_HEADER = "X-Weights-Version"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingSettings(_Wire):
    """How completions are sampled (the run's ``trainer`` settings)."""

    num_generations: int
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    eos_token_id: int
    pad_token_id: int
    vocab_size: int


class ModelSpec(_Wire):
    """What a rollout worker builds before it loads weights: a transformers config, and the LoRA
    adapter the weights are laid out for (None: plain model)."""

    config: dict[str, Any] = Field(..., description="``model.config.to_dict()`` of the base model.")
    lora: dict[str, Any] | None = Field(None, description="The run's ``trainer.lora`` (r, alpha, dropout, modules).")


class ManagerInfo(_Wire):
    run_id: str
    epoch: int = Field(..., description="The run's lease epoch this manager serves under.")
    version: int | None = Field(None, description="The latest published weight version (None before the first).")
    max_staleness: int
    lease_s: float
    heartbeat_s: float
    sampling: SamplingSettings
    model: ModelSpec
    groups_total: int = Field(..., description="Groups in the whole run (max_steps × prompts_per_step).")
    env: dict[str, Any] | None = Field(None, description="A run that plays episodes: its ``env`` section "
                                       "(``config.EnvConfig``), which a worker opens its own environments with.")
    generate: str | None = Field(None, description="A run's ``rollout.generate`` hook (``pkg.mod:function``): a "
                                 "worker plays each group with it.")
    tokenizer_files: dict[str, str] | None = Field(
        None, description="For a run that plays episodes: the tokenizer's files (name → text), which a worker "
        "decodes actions and encodes observations with.")

    @property
    def plays_episodes(self) -> bool:
        return self.env is not None or self.generate is not None


class RegisterWorker(_Wire):
    worker_id: str = Field(..., pattern=WORKER_ID_PATTERN)
    threads: int = Field(1, ge=1, le=1024)
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)


class Registered(_Wire):
    worker_id: str
    heartbeat_s: float
    version: int | None = Field(None, description="The latest published weight version.")


class WorkerHeartbeat(_Wire):
    version: int | None = Field(None, ge=0, description="The weight version the worker holds.")
    tokens_per_s: float = Field(0.0, ge=0)


class WeightChunk(_Wire):
    """Bytes ``offset`` to ``offset + length`` of the file, and their sha256 (hex)."""

    offset: int
    length: int
    sha256: str


class WeightsManifest(_Wire):
    """One published version of the policy: a safetensors file, served in chunks."""

    version: int
    format: str = "safetensors"
    total_bytes: int
    sha256: str = Field(..., description="sha256 of the whole file; informational: a pull verifies the chunks, "
                                         "which tile the file.")
    chunks: list[WeightChunk]


class LeaseRequest(_Wire):
    worker_id: str = Field(..., pattern=WORKER_ID_PATTERN)
    version: int = Field(..., ge=0, description="The weight version the worker will sample with.")
    max_groups: int = Field(1, ge=1, le=1024)


class GroupLease(_Wire):
    group_id: int
    attempt: int
    prompt_ids: list[int]
    deadline_s: float = Field(..., description="Seconds from now until the group is re-queued.")
    task: dict[str, Any] | None = Field(None, description="A run that plays episodes: the group's reset arguments.")


class LeaseResponse(_Wire):
    groups: list[GroupLease]
    latest_version: int | None
    finished: bool = Field(False, description="Every group of the run is trained or handed out for the last time.")


class Completion(_Wire):
    token_ids: list[int] = Field(..., min_length=1, description="Generated tokens, EOS included when reached.")
    logps: list[float] = Field(..., description="Sampling log-prob of each token (same length).")
    finished: bool = Field(..., description="Ended with EOS (else truncated at max_new_tokens); an episode: "
                           "ended by its environment (else at max_turns).")
    action_mask: list[int] | None = Field(None, description="An episode: 1 on the policy's tokens, 0 on the "
                                          "environment's (same length as token_ids).")
    env_reward: float | None = Field(None, description="An episode: the environment's reward (None: it gave none).")

    @field_validator("action_mask")
    @classmethod
    def _zeros_and_ones(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(v not in (0, 1) for v in value):
            raise ValueError("must hold only 0 and 1")
        return value

    @field_validator("env_reward")
    @classmethod
    def _finite_reward(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{value} is not a finite number")
        return value

    @field_validator("logps")
    @classmethod
    def _finite(cls, value: list[float]) -> list[float]:
        for i, logp in enumerate(value):
            if not math.isfinite(logp) or logp > 0:
                raise ValueError(f"logps[{i}] = {logp} is not a log-probability (finite, <= 0)")
        return value


class GroupResult(_Wire):
    worker_id: str = Field(..., pattern=WORKER_ID_PATTERN)
    attempt: int = Field(..., ge=1)
    version: int = Field(..., ge=0, description="The weight version the completions were sampled with.")
    completions: list[Completion]
    seconds: float = Field(0.0, ge=0, description="Generation time, for the pool's tokens/s.")


class ReleaseGroup(_Wire):
    worker_id: str = Field(..., pattern=WORKER_ID_PATTERN)
    attempt: int = Field(..., ge=1)


class ResultAck(_Wire):
    group_id: int
    accepted: bool


class GroupResults(_Wire):
    """The results of one batch, each taken (or refused) on its own as by ``/groups/{group_id}/result``."""

    results: list[tuple[int, GroupResult]] = Field(..., min_length=1, max_length=1024,
                                                    description="(group_id, result) pairs.")


class BatchItem(_Wire):
    group_id: int
    accepted: bool
    status: int = Field(200, description="What the single-result call would have answered.")
    detail: str | None = None


class BatchAck(_Wire):
    items: list[BatchItem]
