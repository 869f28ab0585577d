"""The environment the worker starts a trainer with (DESIGN §6): one typed record,
``TrainerEnv``, written by the worker (``to_env``) and read by the trainer (``from_env``).

Every ``RELAY_*`` variable of the contract is a field here and nowhere else; the table in
``docs/trainer-contract.md`` is checked against ``VARIABLES`` by a test.
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


def _var(name: str, doc: str, default: Any = None) -> Any:
    return field(default=default, metadata={"env": name, "doc": doc})


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
    log_level: str = _var("RELAY_LOG_LEVEL", "the built-in trainers' log level (default `INFO`)", "INFO")

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
        """Read the variables (``os.environ`` by default). ``RELAY_OUTPUT_DIR`` is required;
        numbers, flags and the trajectory pattern are checked. Raises ``ConfigError`` naming
        the variable."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in _FIELDS:
            name = f.metadata["env"]
            raw = env.get(name, "").strip()
            if not raw:
                continue
            values[f.name] = _parse(name, raw, f.type)
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
