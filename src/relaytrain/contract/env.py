"""The environment the worker starts a trainer with (DESIGN §6): one typed record,
``TrainerEnv``, written by the worker (``to_env``) and read by the trainer (``from_env``).

Every ``RELAY_*`` variable of the contract is a field here and nowhere else; the table in
``docs/trainer-contract.md`` is checked against ``VARIABLES`` by a test. Under torchrun a
trainer is one of several ranks: torchrun's own ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``
(``RANK_VARIABLES``) are read into ``rank``, ``world_size`` and ``local_rank`` (0, 1, 0
without them); the worker never writes them (``to_env``).

Public API: ``TrainerEnv``, ``VARIABLES``, ``RANK_VARIABLES``, ``RANK_ENV``, ``WORLD_SIZE_ENV``,
``LOCAL_RANK_ENV``, ``ELASTIC_RUN_ENV``, ``under_torchrun(env)``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relaytrain.errors import ConfigError

from .layout import DEFAULT_TRAJECTORY_PATTERN, check_trajectory_pattern

RANK_ENV = "RANK"
WORLD_SIZE_ENV = "WORLD_SIZE"
LOCAL_RANK_ENV = "LOCAL_RANK"
ELASTIC_RUN_ENV = "TORCHELASTIC_RUN_ID"
"""torchrun's variables: a process's rank, the number of ranks, its rank on this machine, and
the rendezvous id every process torchrun's agent starts carries."""


def under_torchrun(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process is a rank started by torchrun (or its launcher API): it carries
    ``LOCAL_RANK`` or ``TORCHELASTIC_RUN_ID``."""
    env = os.environ if env is None else env
    return LOCAL_RANK_ENV in env or ELASTIC_RUN_ENV in env


def _var(name: str, doc: str, default: Any = None) -> Any:
    return field(default=default, metadata={"env": name, "doc": doc})


def _rank_var(name: str, doc: str, default: int) -> Any:
    return field(default=default, metadata={"torchrun": name, "doc": doc})


@dataclass
class TrainerEnv:
    """What the worker tells a trainer. Paths are absolute on the worker's side; empty
    variables read as unset (None)."""

    output_dir: Path = _var("RELAY_OUTPUT_DIR", "where the trainer writes checkpoints: `<run_root>/checkpoints`")
    run_id: str = _var("RELAY_RUN_ID", "which run", "local")
    epoch: int = _var("RELAY_EPOCH", "which attempt: the lease's epoch, one more at every grant", 0)
    run_root: Path | None = _var("RELAY_RUN_ROOT", "the run's folder on this machine: `<workdir>/runs/<run_id>`")
    resume_from: Path | None = _var(
        "RELAY_RESUME_FROM", "a verified checkpoint folder to resume from, or empty: start from scratch")
    init_from: str | None = _var(
        "RELAY_INIT_FROM", "for a run with `init_from`, the checkpoint (or model path) to initialise weights from")
    max_steps: int | None = _var("RELAY_MAX_STEPS", "the step to stop at")
    progress_file: Path | None = _var("RELAY_PROGRESS_FILE", "a JSON-lines file the trainer appends to")
    stop_file: Path | None = _var("RELAY_STOP_FILE", "when this file exists: checkpoint and exit 0")
    run_config: Path | None = _var("RELAY_RUN_CONFIG", "the run file, as JSON")
    checkpoint_every: int | None = _var("RELAY_CHECKPOINT_EVERY", "the run's `checkpoint.every_steps`")
    save_rollout_trajectories: bool = _var(
        "RELAY_SAVE_ROLLOUT_TRAJECTORIES", "`1` when the run file asks for RL trajectories to be kept (and uploaded "
        "with each durable checkpoint), else `0`", False)
    rollout_trajectory_root: Path | None = _var(
        "RELAY_ROLLOUT_TRAJECTORY_ROOT", "the folder RL trajectories go to: `<run_root>/<trajectories.subdir>`")
    rollout_trajectory_pattern: str = _var(
        "RELAY_ROLLOUT_TRAJECTORY_PATTERN", "a trajectory file's name, as a Python format with one field "
        "`rollout_id` (default `rollout_{rollout_id:08d}.jsonl`)", DEFAULT_TRAJECTORY_PATTERN)
    eval_checkpoints: Path | None = _var(
        "RELAY_EVAL_CHECKPOINTS", "for an `eval` run, a JSON list of the checkpoints to score")
    advertise_host: str | None = _var(
        "RELAY_ADVERTISE_HOST", "the host name or address rollout workers reach this machine by (the worker's "
        "`--advertise-host`); empty: the address that routes to the commander")
    nproc_per_node: int | None = _var(
        "RELAY_NPROC_PER_NODE", "the ranks a distributed built-in run starts on this worker when its run file fixes "
        "none (the worker's `--nproc-per-node`); empty: one per GPU the trainer sees")
    log_level: str = _var("RELAY_LOG_LEVEL", "the built-in trainers' log level (default `INFO`)", "INFO")
    rank: int = _rank_var(RANK_ENV, "this process's rank among all of them (0: the one that reports)", 0)
    world_size: int = _rank_var(WORLD_SIZE_ENV, "how many ranks train the run", 1)
    local_rank: int = _rank_var(LOCAL_RANK_ENV, "this process's rank on this machine (its GPU index)", 0)

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        if self.run_root is None:
            self.run_root = self.output_dir.parent

    def to_env(self) -> dict[str, str]:
        """The variables as strings (None → empty, booleans → ``1``/``0``)."""
        out = {}
        for f in _FIELDS:
            value = getattr(self, f.name)
            if value is None:
                text = ""
            elif isinstance(value, bool):
                text = "1" if value else "0"
            else:
                text = str(value)
            out[f.metadata["env"]] = text
        return out

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TrainerEnv:
        """Read the variables (``os.environ`` by default), torchrun's ``RANK``, ``WORLD_SIZE`` and
        ``LOCAL_RANK`` too. ``RELAY_OUTPUT_DIR`` is required; numbers, flags, ranks and the
        trajectory pattern are checked. Raises ``ConfigError`` naming the variable."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in _FIELDS:
            name = f.metadata["env"]
            raw = env.get(name, "").strip()
            if not raw:
                continue
            values[f.name] = _parse(name, raw, f.type)
        for f in _RANK_FIELDS:
            raw = env.get(f.metadata["torchrun"], "").strip()
            if raw:
                values[f.name] = _parse(f.metadata["torchrun"], raw, f.type)
        _check_ranks(values.get("rank", 0), values.get("world_size", 1), values.get("local_rank", 0))
        if "output_dir" not in values:
            raise ConfigError("RELAY_OUTPUT_DIR: required (the folder the trainer writes checkpoints to)")
        if values.get("max_steps") is not None and values["max_steps"] < 1:
            raise ConfigError(f"RELAY_MAX_STEPS: must be ≥ 1, got {values['max_steps']}")
        if "rollout_trajectory_pattern" in values:
            try:
                check_trajectory_pattern(values["rollout_trajectory_pattern"])
            except ValueError as exc:
                raise ConfigError(f"RELAY_ROLLOUT_TRAJECTORY_PATTERN: {exc}") from exc
        return cls(**values)


def _check_ranks(rank: int, world_size: int, local_rank: int) -> None:
    if world_size < 1:
        raise ConfigError(f"{WORLD_SIZE_ENV}: must be ≥ 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ConfigError(f"{RANK_ENV}: must be in [0, {WORLD_SIZE_ENV}={world_size}), got {rank}")
    if local_rank < 0:
        raise ConfigError(f"{LOCAL_RANK_ENV}: must be ≥ 0, got {local_rank}")


def _parse(name: str, raw: str, annotation: str) -> Any:
    if annotation.startswith("Path"):
        return Path(raw)
    if annotation.startswith("int"):
        try:
            return int(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}: must be an integer, got {raw!r}") from exc
    if annotation == "bool":
        if raw.lower() in ("1", "true", "yes"):
            return True
        if raw.lower() in ("0", "false", "no"):
            return False
        raise ConfigError(f"{name}: must be 1 or 0, got {raw!r}")
    return raw


_FIELDS = [f for f in dataclasses.fields(TrainerEnv) if "env" in f.metadata]
VARIABLES: dict[str, str] = {f.metadata["env"]: f.metadata["doc"] for f in _FIELDS}
"""Every contract variable and what it means, in the order of ``TrainerEnv``."""
_RANK_FIELDS = [f for f in dataclasses.fields(TrainerEnv) if "torchrun" in f.metadata]
RANK_VARIABLES: dict[str, str] = {f.metadata["torchrun"]: f.metadata["doc"] for f in _RANK_FIELDS}
"""torchrun's variables a rank reads (never written by the worker), and what they mean."""
