"""``/api/v1/runs``: submit, cancel and resume runs (submit scope: admin or submit; ``kind: command``
runs are code that workers run, so no worker, rollout or viewer token may queue one); list and
read runs, a run's events (read scope: admin, submit or viewer; a viewer sees the config redacted)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query

from relaytrain.api import models as m
from relaytrain.config import RunConfig, redact_secrets
from relaytrain.errors import ConfigError, InvalidState, NotFound

from .deps import (
    AUTHED,
    BODY,
    READ,
    SUBMIT,
    ReadScope,
    RunIdPath,
    StoreDep,
    UnschedulableAfterDep,
    WakeupDep,
    call,
    errors,
)

router = APIRouter(prefix="/api/v1/runs", tags=["runs"])


@router.post("", response_model=m.RunDetail, status_code=201, dependencies=[SUBMIT],
             responses=errors(*AUTHED, NotFound, InvalidState, ConfigError, *BODY))
async def submit_run(config: Annotated[RunConfig, Body()], store: StoreDep, wakeup: WakeupDep) -> dict[str, Any]:
    """Queue a run. 409 if its id is taken, or its ``init_from`` run ended without success."""
    run = await call(store.submit_run, config)
    wakeup.notify()
    return run


@router.get("", response_model=m.RunList, dependencies=[READ], responses=errors(*AUTHED))
async def list_runs(
    store: StoreDep,
    grace: UnschedulableAfterDep,
    status: m.RunStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> dict[str, Any]:
    return await call(store.list_runs, status=status, limit=limit, offset=offset, unschedulable_after_s=grace)


@router.get("/{run_id}", response_model=m.RunDetail, responses=errors(*AUTHED, NotFound))
async def get_run(
    run_id: RunIdPath,
    store: StoreDep,
    scope: ReadScope,
    grace: UnschedulableAfterDep,
    redact: Annotated[bool, Query(description="Config without secrets (always so for a viewer token).")] = False,
) -> dict[str, Any]:
    run = await call(store.get_run, run_id, unschedulable_after_s=grace)
    if redact or scope == "viewer":
        run["config"] = redact_secrets(run["config"])
    return run


@router.post("/{run_id}/cancel", response_model=m.RunDetail, dependencies=[SUBMIT],
             responses=errors(*AUTHED, NotFound, InvalidState))
async def cancel_run(run_id: RunIdPath, store: StoreDep) -> dict[str, Any]:
    """Cancel a queued run at once; ask the holder of a running one to stop."""
    return await call(store.cancel_run, run_id)


@router.post("/{run_id}/resume", response_model=m.RunDetail, dependencies=[SUBMIT],
             responses=errors(*AUTHED, NotFound, InvalidState, ConfigError, *BODY))
async def resume_run(run_id: RunIdPath, req: m.ResumeRequest, store: StoreDep, wakeup: WakeupDep) -> dict[str, Any]:
    """Re-open an ended run from its newest durable checkpoint, or fork it from an older one."""
    run = await call(store.reopen_run, run_id, from_step=req.from_step, additional_steps=req.additional_steps)
    wakeup.notify()
    return run


@router.get("/{run_id}/events", response_model=m.EventList, dependencies=[READ], responses=errors(*AUTHED, NotFound))
async def run_events(
    run_id: RunIdPath,
    store: StoreDep,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    return await call(store.list_events, run_id, after=after, limit=limit)
