"""Wire types shared by the commander, the worker and the CLI (HTTP API ``/api/v1``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from relaytrain.config import RUN_ID_PATTERN, RunKind
from relaytrain.contract.lines import MAX_METRIC_NAME, METRIC_NAME_PATTERN

from .status import AttemptOutcome, FailureClass, LogStream, RunStatus, WorkerCondition

WORKER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
WORKER_HEARTBEAT_S = 30.0
"""How often a worker heartbeats."""
WORKER_DEAD_AFTER_S = 3 * WORKER_HEARTBEAT_S
"""A worker not heard from for this long is shown dead (its leases expire on their own)."""
SHA256_PATTERN = r"^[0-9a-f]{64}$"
ReportedOutcome = Literal[
    AttemptOutcome.SUCCEEDED, AttemptOutcome.PREEMPTED, AttemptOutcome.FAILED, AttemptOutcome.CANCELLED
]
"""The outcomes a worker reports (``lost`` is the commander's, for an expired lease)."""
TokenScope = Literal["admin", "submit", "worker", "rollout", "viewer"]
"""What a token reaches (docs/commander.md, "Tokens and scopes"; the routes' decisions:
:mod:`relaytrain.commander.routes.deps`). ``admin``: everything. ``submit``: submit, cancel and
resume runs (``kind: command`` included: code that runs on workers) and read what a viewer reads,
run configs unredacted. ``worker``: the worker endpoints. ``rollout``: a rollout worker's
endpoints and nothing else. ``viewer``: read-only, for the dashboard: the GET endpoints its pages
read (runs, their attempts, metrics, checkpoints, evaluations, ledger, logs, rollout pool;
workers, hosts), run configs redacted (:mod:`relaytrain.config.redact`)."""
TOKEN_NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"
"""A token's name is shown in tables and errors, and stored (PostgreSQL refuses a NUL in text)."""
TOKEN_CACHE_S = 30.0
"""How long a commander trusts a token it read from its database: a revoked token is refused
within this time (an expired one at once)."""
TOKEN_EXPIRES_IN_MAX_S = 10 * 365 * 86400
"""The longest expiry a token may be given (ten years); no expiry at all is ``None``."""

WorkerId = Field(..., pattern=WORKER_ID_PATTERN, description="The worker's unique id.")
Epoch = Field(..., ge=1, le=2**31 - 1, description="The fencing token of the lease.")
Step = Field(..., ge=0, le=10**9)
REVISION_DOC = "The store's commit of this checkpoint (Hugging Face Hub), when the store keeps history."


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _no_bool_coercion(model: type[BaseModel], data: Any) -> Any:
    """Refuse a JSON ``true``/``false`` where the schema wants a number (pydantic would take it for
    1/0) and a number where it wants a boolean, as the schema says. ``2.0`` still counts as ``2``."""
    if not isinstance(data, dict):
        return data
    for name, field in model.model_fields.items():
        value = data.get(name)
        if value is None:
            continue
        if field.annotation is bool or bool in get_args(field.annotation):
            if not isinstance(value, bool):
                raise ValueError(f"{name}: Input should be a valid boolean")
            continue
        values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        if any(isinstance(v, bool) for v in values):
            raise ValueError(f"{name}: Input should not be a boolean")
    return data


class _Request(_Wire):
    """A request body (see :func:`_no_bool_coercion`)."""

    @model_validator(mode="before")
    @classmethod
    def _exact_types(cls, data: Any) -> Any:
        return _no_bool_coercion(cls, data)


class GpuInfo(_Request):
    index: int = Field(..., ge=0, le=1024)
    name: str = Field(..., max_length=256)
    memory_mb: int = Field(..., ge=0)
    uuid: str | None = Field(None, max_length=128)


class WorkerResources(_Request):
    gpus: list[GpuInfo] = Field(default_factory=list, max_length=64)
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    price_per_hour: float | None = Field(None, ge=0, description="What this machine costs, in dollars per hour.")


class RegisterWorker(_Request):
    worker_id: str = WorkerId
    provider: str = Field("local", max_length=32)
    hostname: str | None = Field(None, max_length=255)
    version: str | None = Field(None, max_length=32)
    resources: WorkerResources = Field(default_factory=WorkerResources)
    kinds: list[RunKind] | None = Field(None, description="Kinds of run this worker serves (those it claims); all "
                                                          "when unset. The commander counts it for no other kind.")


class WorkerHealth(_Wire):
    """A reason exactly when degraded: the rule is in the JSON schema too (``if``/``then``/``else``)."""

    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"condition": {"const": WorkerCondition.DEGRADED.value}}, "required": ["condition"]},
        "then": {"required": ["reason"], "properties": {"reason": {"type": "string", "minLength": 1}}},
        "else": {"properties": {"reason": {"type": "null"}}},
    })

    condition: WorkerCondition = Field(..., description="ok, or degraded: the worker claims nothing.")
    reason: str | None = Field(None, max_length=2000, description="Why the worker is degraded (then required).")

    @model_validator(mode="after")
    def _reason_with_degraded(self) -> WorkerHealth:
        if self.condition == WorkerCondition.DEGRADED and not self.reason or (
                self.condition != WorkerCondition.DEGRADED and self.reason is not None):
            raise ValueError("reason is required when condition is 'degraded', and only then")
        return self


class Heartbeat(_Request):
    resources: WorkerResources | None = None
    health: WorkerHealth | None = Field(None, description="The machine's condition now; None leaves it as it was.")


class WorkerInfo(_Wire):
    worker_id: str
    provider: str
    hostname: str | None
    version: str | None
    resources: WorkerResources
    registered_at: float
    last_heartbeat: float
    current_run: str | None = None
    kinds: list[RunKind] | None = Field(None, description="Kinds of run it serves; all when unset.")
    alive: bool = Field(..., description=f"Heartbeat within the last {WORKER_DEAD_AFTER_S:.0f} s.")
    condition: WorkerCondition = WorkerCondition.OK
    condition_reason: str | None = Field(None, description="Why the worker is degraded.")
    condition_since: float | None = Field(None, description="When the worker last changed its condition.")


class CheckpointRef(_Wire):
    run_id: str
    step: int
    epoch: int
    uri: str
    manifest_sha256: str
    created_at: float
    store_run_id: str = Field(..., description="The run under which the files live in the store (a fork's origin).")
    revision: str | None = Field(None, description=REVISION_DOC)


class ClaimRequest(_Request):
    worker_id: str = WorkerId
    resources: WorkerResources = Field(default_factory=WorkerResources)
    kinds: list[RunKind] | None = Field(None, description="Kinds of run this worker serves; all when unset.")
    wait_s: float = Field(10.0, ge=0, le=60, description="Long-poll up to this long when nothing is ready.")


class Grant(_Wire):
    run_id: str
    kind: RunKind
    config: dict[str, Any]
    epoch: int
    ttl_s: float
    expires_at: float
    max_steps: int
    checkpoint: CheckpointRef | None = Field(None, description="The latest durable checkpoint to resume from.")
    init_checkpoint: CheckpointRef | None = Field(None, description="For init_from: {run}, that run's result.")
    eval_checkpoints: list[CheckpointRef] = Field(
        default_factory=list, description="For an eval run: the source run's checkpoints to score."
    )
    fallback_checkpoints: list[CheckpointRef] = Field(
        default_factory=list, description="Older durable checkpoints, newest first, if the latest is corrupt."
    )


class ClaimResponse(_Wire):
    grant: Grant | None


class LeaseRef(_Request):
    worker_id: str = WorkerId
    epoch: int = Epoch


class ResumeReport(LeaseRef):
    step: int = Step
    note: str | None = Field(None, max_length=10_000, description="Why not from a newer checkpoint.")


class RenewResponse(_Wire):
    expires_at: float
    ttl_s: float
    cancel_requested: bool


# failure_class goes with outcome "failed" and only with it: said in the schema as well, so a client
# generated from /openapi.json knows it.
_RELEASE_SCHEMA = {"anyOf": [
    {"properties": {"outcome": {"const": AttemptOutcome.FAILED.value},
                    "failure_class": {"enum": [c.value for c in FailureClass]}},
     "required": ["failure_class"]},
    {"properties": {"outcome": {"enum": [o.value for o in AttemptOutcome
                                         if o not in (AttemptOutcome.FAILED, AttemptOutcome.LOST)]},
                    "failure_class": {"type": "null"}}},
]}


class ReleaseRequest(LeaseRef):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_RELEASE_SCHEMA)
    outcome: ReportedOutcome
    failure_class: FailureClass | None = None
    message: str | None = Field(None, max_length=10_000)
    stderr_tail: str | None = Field(None, max_length=65_536)
    step: int | None = Field(None, ge=0, le=10**9, description="The trainer's last step, for the attempt record.")

    @model_validator(mode="after")
    def _class_with_failure(self) -> ReleaseRequest:
        if self.outcome == AttemptOutcome.FAILED and self.failure_class is None:
            raise ValueError("failure_class is required when outcome is 'failed'")
        if self.outcome != AttemptOutcome.FAILED and self.failure_class is not None:
            raise ValueError("failure_class is only for outcome 'failed'")
        return self


class ReleaseResponse(_Wire):
    status: RunStatus
    retries_used: int
    not_before: float


MetricName = Annotated[str, StringConstraints(max_length=MAX_METRIC_NAME, pattern=METRIC_NAME_PATTERN)]


def _metric_names_schema(schema: dict[str, Any]) -> None:
    """Say the name rule as ``propertyNames`` (pydantic writes ``patternProperties``, which lets any
    other name through in JSON Schema's eyes)."""
    schema.pop("patternProperties", None)
    schema["additionalProperties"] = {"type": "number"}
    schema["propertyNames"] = {"maxLength": MAX_METRIC_NAME, "pattern": METRIC_NAME_PATTERN}


class ProgressPoint(_Request):
    step: int = Step
    metrics: dict[MetricName, float] = Field(default_factory=dict, max_length=256,
                                             json_schema_extra=_metric_names_schema)


class ProgressRequest(LeaseRef):
    points: list[ProgressPoint] = Field(..., min_length=1, max_length=1000)


class CheckpointCommit(LeaseRef):
    step: int = Step
    uri: str = Field(..., min_length=1, max_length=4096)
    manifest_sha256: str = Field(..., pattern=SHA256_PATTERN)
    revision: str | None = Field(None, min_length=1, max_length=256, description=REVISION_DOC)


class AttemptInfo(_Wire):
    epoch: int
    worker_id: str
    granted_at: float
    ended_at: float | None
    outcome: AttemptOutcome | None
    failure_class: FailureClass | None
    message: str | None
    stderr_tail: str | None
    step_start: int
    step_end: int | None
    steps_lost: int | None
    resume_note: str | None = None


class RunSummary(_Wire):
    run_id: str = Field(..., pattern=RUN_ID_PATTERN)
    kind: RunKind
    status: RunStatus
    priority: int
    step: int
    max_steps: int
    epoch: int
    holder: str | None
    lease_expires_at: float | None
    retries_used: int
    max_retries: int
    created_at: float
    updated_at: float
    finished_at: float | None
    last_error: str | None
    unschedulable: str | None = Field(
        None, description="For a queued run that has waited past the commander's grace (relay serve "
                          "--unschedulable-after): why no live worker or SSH host can ever take it, e.g. 'needs 4 "
                          "GPUs; the largest worker has 1'. It stays queued, and is granted as soon as one that fits "
                          "asks.")


class Evaluation(_Wire):
    run_id: str
    status: RunStatus
    dataset: str
    scores: dict[int, dict[str, float]] = Field(..., description="step → metric → value")


class RunDetail(RunSummary):
    config: dict[str, Any]
    cancel_requested: bool
    not_before: float
    depends_on: str | None
    source_run: str | None
    avoid_worker: str | None = Field(None, description="The worker whose machine fault ended the last attempt: "
                                                       "not granted this run again before avoid_until.")
    avoid_until: float | None = None
    attempts: list[AttemptInfo]
    latest_checkpoint: CheckpointRef | None
    evaluations: list[Evaluation] = Field(default_factory=list)


class ResumeRequest(_Request):
    from_step: int | None = Field(None, ge=0, description="None: the newest durable checkpoint (re-open).")
    additional_steps: int = Field(0, ge=0, le=10**9)


class RunList(_Wire):
    items: list[RunSummary]
    total: int
    next_offset: int | None


class EventInfo(_Wire):
    id: int
    run_id: str | None
    ts: float
    kind: str
    message: str
    data: dict[str, Any] | None


class EventList(_Wire):
    items: list[EventInfo]
    next_after: int | None


class CheckpointList(_Wire):
    items: list[CheckpointRef]


class MetricPoint(_Wire):
    step: int
    name: str
    value: float
    epoch: int = Field(..., description="The attempt (lease epoch) that reported it.")
    superseded: bool = Field(False, description="Reported past the step a later attempt resumed from.")


class MetricList(_Wire):
    items: list[MetricPoint] = Field(..., description="Ordered by name, then step.")


class MetricNames(_Wire):
    names: list[str]


LOG_OFFSET_MAX = 2**53
"""The largest log offset: exact as a JSON number in any client (a double)."""
LOG_OFFSET_DOC = ("Where the chunk starts in its attempt's output: the UTF-8 bytes of both streams shipped or "
                  "dropped before it. It grows along the attempt; ``after`` and ``next`` are such offsets.")


class LogChunk(_Request):
    """A piece of the trainer's output, as the worker read it (whole lines unless a line is longer
    than a chunk)."""

    seq: int = Field(..., ge=0, le=LOG_OFFSET_MAX, description=LOG_OFFSET_DOC)
    stream: LogStream
    ts: float = Field(..., ge=0, description="When the worker read it, in seconds since the epoch (its clock).")
    text: str = Field(..., min_length=1, max_length=65_536)

    @property
    def end(self) -> int:
        """The offset just past this chunk."""
        return self.seq + len(self.text.encode())


class LogAppend(LeaseRef):
    """Chunks of the holder's trainer output, in the order read (fenced by the epoch)."""

    chunks: list[LogChunk] = Field(..., min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _in_order(self) -> LogAppend:
        for i, (before, chunk) in enumerate(zip(self.chunks, self.chunks[1:], strict=False), start=1):
            if chunk.seq < before.end:
                raise ValueError(f"chunks.{i}.seq: {chunk.seq} overlaps the chunk before it (ending at {before.end})")
        return self


class LogAck(_Wire):
    end: int = Field(..., description="The offset just past everything the commander has of this attempt.")
    dropped: int = Field(..., description="Bytes of this attempt's output not kept (see LogList.dropped).")


class LogLine(_Wire):
    epoch: int
    seq: int = Field(..., description=LOG_OFFSET_DOC)
    stream: LogStream
    ts: float
    text: str


class LogList(_Wire):
    items: list[LogLine] = Field(..., description="One attempt's chunks, in the order they were read.")
    next: int = Field(..., description="Pass as ``after`` for what follows (the offset past the last item).")
    dropped: int = Field(..., description="Bytes of this attempt's output that are not kept: dropped oldest first by "
                                          "the worker while the commander could not take them, or by the commander "
                                          "beyond the run's logs.max_bytes.")
    attempt: int | None = Field(..., description="The attempt (epoch) shown; None when the run has had none.")


class AttemptLedger(_Wire):
    epoch: int
    worker_id: str
    provider: str
    outcome: AttemptOutcome | None
    wall_s: float
    steps_gained: int
    steps_lost: int = Field(..., description="For a killed holder, a lower bound: only reported steps are known.")
    seconds_per_step: float | None
    useful_s: float
    gpus: int
    price_per_hour: float | None
    gpu_hours: float
    dollars: float
    failover_s: float | None = Field(..., description="Last progress of this attempt → first of the next.")


class LedgerSummary(_Wire):
    attempts: int
    wall_s: float
    useful_s: float
    ettr: float | None = Field(..., description="Useful training time ÷ wall time.")
    gpu_hours: float
    dollars: float
    steps_gained: int
    steps_lost: int
    failover_s: list[float]
    failover_mean_s: float | None


class RunLedger(_Wire):
    run_id: str
    attempts: list[AttemptLedger]
    total: LedgerSummary
    providers: dict[str, LedgerSummary]


class ProviderLedger(_Wire):
    total: LedgerSummary
    providers: dict[str, LedgerSummary]


class TokenCreate(_Request):
    name: str = Field(..., min_length=1, max_length=128, pattern=TOKEN_NAME_PATTERN,
                      description="A name to recognise the token by (no control character).")
    scope: TokenScope = "worker"
    expires_in_s: int | None = Field(None, ge=1, le=TOKEN_EXPIRES_IN_MAX_S,
                                     description="Refused this many seconds after its creation; none: never expires.")


class TokenInfo(_Wire):
    """A token as ``relay token list`` shows it: never the token, nor its hash."""

    id: int
    name: str
    scope: TokenScope
    created_at: float
    expires_at: float | None = Field(None, description="Refused from then on; none: never expires.")
    revoked_at: float | None = None
    last_used_at: float | None = Field(None, description="Its last use, to the minute (written once a minute).")


class TokenCreated(TokenInfo):
    token: str = Field(..., description="Shown once; only its hash is stored.")


class Health(_Wire):
    status: Literal["ok"]
    version: str
    database: str


class ErrorBody(_Wire):
    """Every error answer of the API (4xx, 5xx)."""

    error: str = Field(..., description="The error's class in relaytrain.errors, e.g. NotFound or LeaseLost.")
    detail: str = Field(..., description="What went wrong, for a person.")


class StepAck(_Wire):
    """The run's step after a progress report or a resume report."""

    step: int
