"""The lease endpoints (worker scope, DESIGN §4): claim a run, renew, release; and the calls a
holder makes under its lease (progress, resume report). Every call but the claim carries
``(worker_id, epoch)`` and is refused with 409, changing nothing, unless that epoch holds the
run's live lease."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from relaytrain.api import models as m
from relaytrain.errors import LeaseLost, NotFound

from .deps import AUTHED, BODY, WORKER, RunIdPath, StoreDep, TelemetryDep, WakeupDep, call, errors

router = APIRouter(tags=["leases"], dependencies=[WORKER])
_FENCED = errors(*AUTHED, NotFound, LeaseLost, *BODY)


@router.post("/api/v1/leases/claim", response_model=m.ClaimResponse, responses=errors(*AUTHED, *BODY))
async def claim(req: m.ClaimRequest, store: StoreDep, telemetry: TelemetryDep, wakeup: WakeupDep) -> dict[str, Any]:
    """Grant the best run this worker can serve, long-polling up to ``wait_s``; ``grant`` null if none."""
    telemetry.counts["claims"] += 1
    deadline = time.monotonic() + req.wait_s
    while True:
        grant = await call(store.claim_run, req.worker_id, gpus=len(req.resources.gpus),
                           labels=req.resources.labels, kinds=req.kinds, price_per_hour=req.resources.price_per_hour)
        left = deadline - time.monotonic()
        if grant is not None or left <= 0:
            break
        await wakeup.wait(left)
    if grant is not None:
        telemetry.counts["grants"] += 1
    return {"grant": grant}


@router.post("/api/v1/runs/{run_id}/lease/renew", response_model=m.RenewResponse, responses=_FENCED)
async def renew(run_id: RunIdPath, req: m.LeaseRef, store: StoreDep, telemetry: TelemetryDep) -> dict[str, Any]:
    result = await call(store.renew_lease, run_id, req.worker_id, req.epoch)
    telemetry.counts["renewals"] += 1
    return result


@router.post("/api/v1/runs/{run_id}/lease/release", response_model=m.ReleaseResponse, responses=_FENCED)
async def release(run_id: RunIdPath, req: m.ReleaseRequest, store: StoreDep, telemetry: TelemetryDep,
                  wakeup: WakeupDep) -> dict[str, Any]:
    """End the lease with an outcome; the retry policy decides the run's next status."""
    result = await call(store.release_lease, run_id, req.worker_id, req.epoch, outcome=req.outcome,
                        failure_class=req.failure_class, message=req.message, stderr_tail=req.stderr_tail,
                        step=req.step)
    telemetry.counts["releases"] += 1
    wakeup.notify()
    return result


@router.post("/api/v1/runs/{run_id}/lease/resumed", response_model=m.StepAck, responses=_FENCED)
async def resumed(run_id: RunIdPath, req: m.ResumeReport, store: StoreDep) -> dict[str, Any]:
    """The holder resumed at ``step``; ``note`` says why not from a newer checkpoint."""
    await call(store.record_resume, run_id, req.worker_id, req.epoch, step=req.step, note=req.note)
    return {"step": req.step}


@router.post("/api/v1/runs/{run_id}/progress", response_model=m.StepAck, responses=_FENCED)
async def progress(run_id: RunIdPath, req: m.ProgressRequest, store: StoreDep) -> dict[str, Any]:
    step = await call(store.record_progress, run_id, req.worker_id, req.epoch, [p.model_dump() for p in req.points])
    return {"step": step}
