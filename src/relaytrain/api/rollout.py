"""Wire types of the elastic rollout pool (DESIGN §11, docs/rollout.md): where a run's rollout
manager is, the pool it sees, and the rollout workers the commander knows."""

from __future__ import annotations

from pydantic import Field

from relaytrain.config import RUN_ID_PATTERN

from .models import LeaseRef, WorkerId, _Request, _Wire


class RolloutWorkerView(_Request):
    """One rollout worker as the run's manager last saw it."""

    worker_id: str = Field(..., min_length=1, max_length=128, description="The rollout worker's id.")
    version: int | None = Field(None, ge=0, le=10**9, description="The weight version it holds.")
    groups_in_flight: int = Field(0, ge=0, le=10**9, description="Groups it holds a lease on.")
    tokens_per_s: float = Field(0.0, ge=0, allow_inf_nan=False, description="Tokens it generates per second.")
    groups_done: int = Field(0, ge=0, le=10**9, description="Groups it finished for this manager.")
    last_seen_s: float = Field(0.0, ge=0, allow_inf_nan=False,
                               description="Seconds since the manager last heard from it.")


class RolloutAnnounce(LeaseRef):
    """A training worker forwards its trainer's rollout manager (fenced by the lease epoch)."""

    url: str = Field(..., min_length=1, max_length=2048, pattern=r"^https?://", description="The manager's base URL.")
    secret: str = Field(..., min_length=16, max_length=256, description="What rollout workers present to the manager.")
    version: int | None = Field(None, ge=0, le=10**9, description="The latest weight version the manager serves.")
    pool: list[RolloutWorkerView] = Field(default_factory=list, max_length=1024)


class RolloutPool(_Wire):
    """A run's rollout pool as its manager last reported it, without what rollout workers present
    to the manager (``GET /api/v1/runs/{id}/rollout/pool``, viewer scope)."""

    run_id: str
    epoch: int
    url: str
    version: int | None = None
    pool: list[RolloutWorkerView] = Field(default_factory=list)
    updated_at: float


class RolloutEndpoint(RolloutPool):
    """Where a run's rollout manager is now (only while the run is running under that epoch):
    its pool, and what rollout workers present to it (rollout scope)."""

    secret: str


class RolloutRun(_Wire):
    """A running run that hosts a rollout manager and takes rollout workers."""

    run_id: str
    epoch: int
    labels: dict[str, str] = Field(default_factory=dict, description="Labels a rollout worker must offer.")
    rollout_workers: int = Field(0, description="Rollout workers its manager reported.")


class RegisterRolloutWorker(_Request):
    worker_id: str = WorkerId
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    run_id: str | None = Field(None, pattern=RUN_ID_PATTERN, description="The run it serves now, if any.")


class RolloutWorkerInfo(_Wire):
    """A rollout worker as the commander knows it (``GET /api/v1/rollout/workers``)."""

    worker_id: str
    labels: dict[str, str] = Field(default_factory=dict)
    run_id: str | None = Field(None, description="The run it said it serves, at its last registration.")
    registered_at: float
    last_seen: float
