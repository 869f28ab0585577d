"""The run file (``relay submit run.yaml``): typed models, validated at load.

A bad file fails at ``relay submit`` with the path of the offending field, for example
``checkpoint.every_steps: Input should be greater than or equal to 1 (got 0)`` — never
deep inside a worker an hour later. This module imports nothing of ours but the errors and
the trainer contract's rules (both leaves).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BeforeValidator,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import to_jsonable_python

from relaytrain import EVAL_BATCH_SIZE
from relaytrain.contract import (
    DEFAULT_TRAJECTORY_PATTERN,
    DEFAULT_TRAJECTORY_SUBDIR,
    check_trajectory_pattern,
    check_trajectory_subdir,
)
from relaytrain.errors import ConfigError

from ._base import _Model
from .distributed import DistributedConfig
from .episodes import EnvConfig, RolloutConfig
from .secret_refs import EnvValue, env_value, inline_secrets, inline_secrets_message, refuse_inline_env_secrets
from .validation import format_validation_error

RUN_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
_RUN_ID_RE = re.compile(RUN_ID_PATTERN)
DEFAULT_LOG_MAX_BYTES = 4 << 20
"""``logs.max_bytes``: 4 MiB of each attempt's stdout and stderr kept by the commander."""
RunKind = Literal["sft", "grpo", "command", "eval"]
RUN_KINDS: tuple[str, ...] = ("sft", "grpo", "command", "eval")
Tracker = Literal["tensorboard", "wandb", "mlflow"]
TRACKERS: tuple[str, ...] = ("tensorboard", "wandb", "mlflow")
"""What ``report_to`` may name (the transformers/TRL convention); each is an optional pip extra."""


def parse_report_to(value: Any) -> Any:
    """``report_to`` as a list: one name or a comma-separated string (``"wandb,mlflow"``) is split,
    ``"none"`` is no tracker; anything else is left for the field's validation."""
    if isinstance(value, str):
        names = [part.strip() for part in value.split(",") if part.strip()]
        return [] if names == ["none"] else names
    return value


def validate_run_id(value: str) -> str:
    """Return ``value`` if it is a safe run id (it becomes a folder name), else raise ValueError."""
    if not isinstance(value, str) or not _RUN_ID_RE.fullmatch(value):
        raise ValueError(
            "must match ^[a-z0-9][a-z0-9._-]{0,127}$ (lower-case letters, digits, '.', '_', '-'; "
            "at most 128 characters)"
        )
    if ".." in value:
        raise ValueError("must not contain '..'")
    return value


class Resources(_Model):
    """What a worker must offer to be granted the run."""

    gpus: int = Field(0, ge=0, le=64, description="GPUs the run needs on one worker.")
    labels: dict[str, str] = Field(
        default_factory=dict, description="Labels the worker must carry, all of them, with equal values."
    )


class CheckpointPolicy(_Model):
    """When checkpoints are written and which ones are kept."""

    every_steps: int = Field(100, ge=1, description="Write a checkpoint every this many steps.")
    keep_last: int = Field(3, ge=1, description="Keep the newest this many checkpoints.")
    keep_every: int | None = Field(None, ge=1, description="Also keep checkpoints whose step is a multiple of this.")
    async_save: bool = Field(False, description="Copy state to host memory and write in a background thread.")


class RetryPolicy(_Model):
    """How transient failures are retried (DESIGN §7). Preemptions never spend a retry."""

    max_retries: int = Field(3, ge=0, le=1000, description="Transient failures tolerated before the run fails.")
    backoff_base_s: float = Field(10.0, gt=0, le=86400, description="Delay before the first retry, in seconds.")
    backoff_cap_s: float = Field(600.0, gt=0, le=86400, description="Longest delay between retries, in seconds.")

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> RetryPolicy:
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError("backoff_cap_s must be ≥ backoff_base_s")
        return self

    def backoff_s(self, retries_used: int) -> float:
        """The delay before the retry that follows the ``retries_used``-th transient failure."""
        return min(self.backoff_cap_s, self.backoff_base_s * 2 ** max(0, retries_used - 1))


class LeasePolicy(_Model):
    """Lease timing (DESIGN §4): renew every ttl/3, self-fence at expires_at − margin (a pause, if the
    commander cannot be reached, for up to ``jeopardy_s``)."""

    ttl_s: float = Field(60.0, ge=3, le=3600, description="Lease time to live, in seconds.")
    margin_s: float = Field(15.0, gt=0, description="The worker stops its trainer this long before expiry.")
    grace_s: float = Field(10.0, gt=0, description="Time between SIGTERM and SIGKILL when stopping a trainer.")
    jeopardy_s: float = Field(600.0, ge=0, le=86400, description=(
        "How long a worker that cannot reach the commander keeps its trainer paused (SIGSTOP) past the "
        "self-fence point, waiting for the commander to confirm the lease, before it kills it; 0 kills at once."))

    @model_validator(mode="after")
    def _margins_fit(self) -> LeasePolicy:
        if self.grace_s >= self.margin_s:
            raise ValueError("grace_s must be < margin_s, or a stopped trainer may outlive the lease")
        if self.margin_s >= self.ttl_s * 2 / 3:
            raise ValueError("margin_s must be < 2/3 of ttl_s, or the worker self-fences between renewals")
        return self


class StoreConfig(_Model):
    """Where checkpoints become durable: a path, s3://bucket/prefix or hf://user/repo."""

    uri: str = Field("./artifacts", min_length=1, description="Store address.")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, R2, …).")
    region: str | None = Field(None, description="S3 region.")
    dry_run: bool = Field(False, description="Plan uploads without network calls (hf only).")

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if "://" in value and not value.startswith(("file://", "s3://", "hf://")):
            raise ValueError("must be a path, file://, s3:// or hf:// URI")
        return value

    @model_validator(mode="after")
    def _dry_run_hf_only(self) -> StoreConfig:
        if self.dry_run and not self.uri.startswith("hf://"):
            raise ValueError("dry_run is supported by hf:// stores only")
        return self


class DataConfig(_Model):
    """Training data: a built-in synthetic dataset or a file."""

    builtin: str | None = Field(None, description="A built-in dataset: 'arithmetic' or 'reverse'.")
    path: str | None = Field(None, description="A JSONL or Parquet file, or a datasets folder.")
    template: Literal["generic", "r1", "deepseek", "chat"] = Field("generic", description="Prompt template.")
    seed: int = Field(0, description="Seed of the synthetic data and of the shuffling.")

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.builtin is None) == (self.path is None):
            raise ValueError("give exactly one of 'builtin' or 'path'")
        return self


class InitFrom(_Model):
    """Start a new run from another run's latest durable checkpoint, or from a path or hub id."""

    run: str | None = Field(None, description="A run whose latest durable checkpoint initialises this one.")
    path: str | None = Field(None, description="A checkpoint folder, model folder or hub id.")

    @model_validator(mode="after")
    def _one_source(self) -> InitFrom:
        if (self.run is None) == (self.path is None):
            raise ValueError("give exactly one of 'run' or 'path'")
        if self.run is not None:
            validate_run_id(self.run)
        return self


class LoraConfig(_Model):
    """LoRA adapter settings (peft)."""

    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])


class SFTTrainer(_Model):
    """Settings of the built-in SFT trainer."""

    learning_rate: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    grad_accum_steps: int = Field(1, ge=1)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    max_grad_norm: float | None = Field(1.0, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0
    lora: LoraConfig | None = None
    distributed: DistributedConfig | None = Field(
        None, description="Train on several processes of one worker under torchrun: DDP or FSDP2 (docs/scaling.md).")
    use_unsloth: bool = Field(
        False, description="Load the model (and LoRA adapter) with unsloth; the run fails at start if it is missing."
    )


class RewardSpec(_Model):
    """A reward function and its weight."""

    name: str = Field(
        ..., min_length=1, description="'correctness', 'keyword_match', 'strict_format' or module:function."
    )
    weight: float = 1.0


class GRPOTrainer(_Model):
    """Settings of the built-in GRPO trainer."""

    learning_rate: float = Field(1e-4, gt=0)
    prompts_per_step: int = Field(8, ge=1)
    num_generations: int = Field(4, ge=2)
    max_new_tokens: int = Field(8, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    beta: float = Field(0.0, ge=0)
    epsilon: float = Field(0.2, gt=0)
    epsilon_high: float | None = Field(None, gt=0)
    scale_rewards: Literal["group", "batch", "none"] = "group"
    loss_type: Literal["dapo", "grpo", "dr_grpo"] = "dapo"
    num_iterations: int = Field(1, ge=1)
    mask_truncated_completions: bool = False
    skip_zero_variance_groups: bool = Field(
        False, description="Leave groups whose rewards are all equal out of the loss (no signal, no token count)."
    )
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="correctness")],
        description="Reward functions and weights; with env: added to the environment's reward (default: none).")
    seed: int = 0
    save_rollout_trajectories: bool = False
    lora: LoraConfig | None = None
    distributed: DistributedConfig | None = Field(
        None, description="Train on several processes of one worker under torchrun: DDP or FSDP2 (docs/scaling.md).")
    use_unsloth: bool = Field(
        False, description="Load the model (and LoRA adapter) with unsloth; the run fails at start if it is missing."
    )


class CommandTrainer(_Model):
    """An external trainer started by the worker under the contract of DESIGN §6."""

    command: str | list[str] = Field(..., description="A shell command line, or an argv list.")
    env: dict[str, Annotated[EnvValue, BeforeValidator(env_value)]] = Field(
        default_factory=dict,
        description="Extra environment variables: a string, {from_worker_env: NAME} (read from the worker's "
                    "environment when the trainer starts: how a secret is given), or {value: TEXT, secret: false} "
                    "for a name that looks secret but is not (docs/security.md).")
    cwd: str | None = Field(None, description="Working folder; the run root when unset.")

    @field_validator("env")
    @classmethod
    def _no_inline_secret(cls, value: dict[str, EnvValue]) -> dict[str, EnvValue]:
        refuse_inline_env_secrets(value)
        return value

    @field_validator("command")
    @classmethod
    def _not_empty(cls, value: str | list[str]) -> str | list[str]:
        if (isinstance(value, str) and not value.strip()) or (isinstance(value, list) and not value):
            raise ValueError("must not be empty")
        return value


EVAL_METRIC_PATTERN = r"^(exact_match|reward:[A-Za-z0-9_.:/-]+)$"


class _EvalSettings(_Model):
    dataset: str = Field("arithmetic", min_length=1, description="A built-in dataset or a JSONL/Parquet file.")
    template: Literal["generic", "r1", "deepseek", "chat"] = Field("generic", description="Prompt template.")
    metrics: list[Annotated[str, Field(pattern=EVAL_METRIC_PATTERN)]] = Field(
        default_factory=lambda: ["exact_match"], min_length=1,
        description="exact_match and/or reward:<name> (a built-in reward or module:function).",
    )
    samples: int | None = Field(None, ge=1, description="Score at most this many held-out records.")
    subset_frac: float | None = Field(None, gt=0, le=1, description="Score this fraction of the held-out split.")
    max_new_tokens: int = Field(8, ge=1, le=4096, description="Greedy completion length.")
    batch_size: int = Field(EVAL_BATCH_SIZE, ge=1, le=4096,
                            description="Prompts completed together (greedy, left-padded; same answers as one by one).")
    timeout_s: float = Field(900, gt=0, description="Time allowed to score one checkpoint.")


class EvalTrainer(_EvalSettings):
    """An evaluation of another run's checkpoints, each scored in its own process."""

    source_run: str = Field(..., description="The run whose checkpoints are scored.")
    steps: Literal["all", "latest"] | list[Annotated[int, Field(ge=0)]] = Field(
        "all", description="Which durable checkpoints: all, latest, or a list of steps."
    )

    @field_validator("source_run")
    @classmethod
    def _safe_source(cls, value: str) -> str:
        return validate_run_id(value)


class AutoEval(_EvalSettings):
    """Evaluate every durable checkpoint whose step is a multiple of ``every_steps``, on any free worker."""

    every_steps: int = Field(..., ge=1, description="Evaluate checkpoints at multiples of this step.")


class Trajectories(_Model):
    """RL rollout trajectories kept for audit: written by the trainer under the run root and
    uploaded by the worker with each durable checkpoint (``<store>/<run_id>/<subdir>/…``)."""

    save: bool = Field(False, description="Keep trajectories (sets RELAY_SAVE_ROLLOUT_TRAJECTORIES=1).")
    subdir: str = Field(DEFAULT_TRAJECTORY_SUBDIR, description="Their folder, relative to the run root.")
    pattern: str = Field(DEFAULT_TRAJECTORY_PATTERN,
                         description="A file's name: a Python format with one integer field, rollout_id.")

    @field_validator("subdir")
    @classmethod
    def _relative(cls, value: str) -> str:
        return check_trajectory_subdir(value)

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        return check_trajectory_pattern(value)


class LogsPolicy(_Model):
    """The trainer's stdout and stderr, shipped by the worker to the commander (``relay logs``)."""

    max_bytes: int = Field(DEFAULT_LOG_MAX_BYTES, ge=0, le=1 << 30,
                           description="The most of an attempt's output the commander keeps, in bytes (UTF-8); "
                                       "older output is dropped first. 0: nothing is shipped.")


class _RunBase(_Model):
    run_id: str = Field(..., description="Unique name of the run; it becomes a folder name.",
                        json_schema_extra={"pattern": RUN_ID_PATTERN, "maxLength": 128})
    priority: int = Field(0, ge=-1000, le=1000, description="Higher runs are granted first.")
    max_steps: int = Field(..., ge=1, le=10**9, description="The run's target step.")
    resources: Resources = Field(default_factory=Resources)
    checkpoint: CheckpointPolicy = Field(default_factory=CheckpointPolicy)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    lease: LeasePolicy = Field(default_factory=LeasePolicy)
    store: StoreConfig = Field(default_factory=StoreConfig)
    hang_timeout_s: float = Field(600.0, ge=1, description="A trainer silent this long is killed as hung.")
    init_from: InitFrom | None = None
    eval: AutoEval | None = Field(None, description="Automatic evaluation of durable checkpoints.")
    trajectories: Trajectories = Field(default_factory=Trajectories)
    logs: LogsPolicy = Field(default_factory=LogsPolicy)

    @field_validator("run_id")
    @classmethod
    def _safe_run_id(cls, value: str) -> str:
        return validate_run_id(value)

    @field_validator("store", mode="before")
    @classmethod
    def _store_from_string(cls, value: Any) -> Any:
        return {"uri": value} if isinstance(value, str) else value

    @field_validator("*")
    @classmethod
    def _no_secret_in_clear(cls, value: Any) -> Any:
        """The commander stores and shows the run file as it is: nothing :func:`redact_secrets`
        would hide may be in it (``trainer.env`` says so per variable, with its fix)."""
        found = inline_secrets(to_jsonable_python(value))
        if found:
            raise ValueError(inline_secrets_message(found))
        return value


class _BuiltinRun(_RunBase):
    report_to: list[Tracker] = Field(
        default_factory=list, max_length=len(TRACKERS),
        description="Also log the trainer's metrics to these trackers: tensorboard, wandb, mlflow (any of them; "
                    "'none': none). Their files live in the run's tracking/ folder and travel with the run.")

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_list(cls, value: Any) -> Any:
        return parse_report_to(value)

    @field_validator("report_to")
    @classmethod
    def _report_to_once(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"names a tracker twice: {value}")
        return value


class SFTRun(_BuiltinRun):
    kind: Literal["sft"]
    model: str = Field("tiny", min_length=1)
    data: DataConfig = Field(default_factory=lambda: DataConfig(builtin="arithmetic"))
    trainer: SFTTrainer = Field(default_factory=SFTTrainer)


class GRPORun(_BuiltinRun):
    kind: Literal["grpo"]
    model: str = Field("tiny", min_length=1)
    data: DataConfig | None = Field(
        default_factory=lambda: DataConfig(builtin="arithmetic"),
        description="Prompts; with env it may be left out (each group's task is then a reset seed).")
    trainer: GRPOTrainer = Field(default_factory=GRPOTrainer)
    rollout: RolloutConfig | None = Field(
        None, description="Host a rollout manager for rollout workers; unset: the trainer generates alone."
    )
    env: EnvConfig | None = Field(None, description="Multi-turn episodes against environments (docs/environments.md).")

    @property
    def plays_episodes(self) -> bool:
        """The trainer plays episodes (``env``, or a ``rollout.generate`` hook) instead of sampling completions."""
        return self.env is not None or (self.rollout is not None and self.rollout.generate is not None)

    @model_validator(mode="after")
    def _env_defaults(self) -> GRPORun:
        """With ``env``: no data and no reward function unless the file names them."""
        if self.env is not None and self.env.down_timeout_s >= self.hang_timeout_s:
            raise ValueError(f"env.down_timeout_s ({self.env.down_timeout_s:g}) must be below hang_timeout_s "
                             f"({self.hang_timeout_s:g}): the worker would kill the trainer as hung first")
        if self.env is not None:
            if "data" not in self.model_fields_set:
                object.__setattr__(self, "data", None)
            if "rewards" not in self.trainer.model_fields_set:
                object.__setattr__(self, "trainer", self.trainer.model_copy(update={"rewards": []}))
        elif self.data is None:
            raise ValueError("data: required unless the run has env")
        elif not self.trainer.rewards:
            raise ValueError("trainer.rewards: at least one reward function is needed unless the run has env")
        return self

    @model_validator(mode="after")
    def _trainer_saves_trajectories(self) -> GRPORun:
        """``trainer.save_rollout_trajectories: true`` (the older spelling) keeps them too."""
        if self.trainer.save_rollout_trajectories and not self.trajectories.save:
            object.__setattr__(self, "trajectories", self.trajectories.model_copy(update={"save": True}))
        return self


class CommandRun(_RunBase):
    kind: Literal["command"]
    trainer: CommandTrainer


class EvalRun(_RunBase):
    kind: Literal["eval"]
    max_steps: int = Field(1, ge=1, le=10**9, description="Unused by evaluation.")
    trainer: EvalTrainer


RunConfig = Annotated[SFTRun | GRPORun | CommandRun | EvalRun, Field(discriminator="kind")]
_RUN_ADAPTER: TypeAdapter[RunConfig] = TypeAdapter(RunConfig)


RUN_UNION: dict[tuple[str, ...], tuple[str, Sequence[str]]] = {(): ("kind", RUN_KINDS)}
"""Where the run kinds' discriminated union sits, for ``format_validation_error``."""


def validate_file(adapter: TypeAdapter[Any], data: Any, *, not_a_mapping: str,
                  unions: Mapping[tuple[str, ...], tuple[str, Sequence[str]]]) -> Any:
    """Validate a YAML file's content with ``adapter``; ConfigError (``not_a_mapping``, or
    every bad field, one line each) otherwise."""
    if not isinstance(data, dict):
        raise ConfigError(not_a_mapping)
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, unions=unions)) from exc


def parse_run_config(data: Any) -> RunConfig:
    """Validate a run file's content; raise ConfigError naming every bad field."""
    return validate_file(_RUN_ADAPTER, data, not_a_mapping="the run file must be a mapping of fields (run_id, kind, …)",
                         unions=RUN_UNION)


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file, raising ConfigError with the file name on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


def load_run_config(path: str | Path) -> RunConfig:
    """Load and validate a run file."""
    try:
        return parse_run_config(load_yaml(path))
    except ConfigError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ConfigError(f"{path}:\n{exc}") from exc.__cause__


def run_config_dict(config: RunConfig) -> dict[str, Any]:
    """The JSON-safe form stored by the commander and sent to workers."""
    return config.model_dump(mode="json")
