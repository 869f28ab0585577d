"""Wire types of the SSH hosts the autoscaler manages (``/api/v1/hosts``, ``relay hosts``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from relaytrain.config import SshHostFields

from .models import _no_bool_coercion, _Request, _Wire
from .status import WorkerRole


class HostSpec(SshHostFields):
    """How to reach a host and what its workers offer (``relay hosts add``; the stack file's fields)."""

    @model_validator(mode="before")
    @classmethod
    def _exact_types(cls, data: Any) -> Any:
        return _no_bool_coercion(cls, data)


class HostPatch(_Request):
    enabled: bool = Field(..., description="False: still polled, but the autoscaler starts nothing there.")


class GpuState(_Wire):
    index: int
    name: str
    memory_total_mb: int
    memory_used_mb: int
    utilization_pct: int | None
    idle: bool


class HostWorker(BaseModel):
    """A worker the autoscaler started on the host, and the GPUs it holds."""

    model_config = ConfigDict(extra="ignore")
    worker_id: str
    gpus: list[int]
    pid: int | None = None
    run_id: str | None = None
    role: WorkerRole = Field(WorkerRole.WORKER, description="A worker, or a rollout worker for ``run_id``.")
    reserved_at: float
    started_at: float | None = None
    dir: str | None = None
    log_path: str | None = None
    pid_path: str | None = None
    config_path: str | None = None
    workdir: str | None = None


class HostInfo(HostSpec):
    name: str
    enabled: bool
    reachable: bool | None = Field(..., description="At the last poll; None before the first.")
    last_error: str | None
    polled_at: float | None
    gpus: list[GpuState]
    free_gpus: list[int] = Field(..., description="Idle at the last poll and held by no worker.")
    workers: list[HostWorker]
    created_at: float
    updated_at: float


class HostRemoved(_Wire):
    name: str
    removed: Literal[True]
