"""The elastic rollout pool's discovery (DESIGN §11, docs/commander.md): a training worker
announces where its trainer's rollout manager is, under its lease (worker scope, fenced like
progress); rollout workers ask where to go and say they exist (rollout scope: a rollout token
reaches these endpoints and nothing else). The dashboard reads the pool, without the manager's
secret (viewer scope). Weights and completions never pass through here."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from relaytrain.api.rollout import (
    RegisterRolloutWorker,
    RolloutAnnounce,
    RolloutEndpoint,
    RolloutPool,
    RolloutRun,
    RolloutWorkerInfo,
)
from relaytrain.errors import LeaseLost, NotFound, RequestInvalid

from .deps import AUTHED, BODY, READ, ROLLOUT, WORKER, RunIdPath, StoreDep, WorkerIdPath, call, errors

router = APIRouter(tags=["rollout"])


@router.put("/api/v1/runs/{run_id}/rollout", response_model=RolloutEndpoint, dependencies=[WORKER],
            responses=errors(*AUTHED, NotFound, LeaseLost, *BODY))
async def announce_rollout(run_id: RunIdPath, req: RolloutAnnounce, store: StoreDep) -> dict[str, Any]:
    """The holder's trainer serves rollout workers at ``url`` (and sees this ``pool``); refused with
    409, changing nothing, unless ``(worker_id, epoch)`` holds the run's live lease."""
    return await call(store.announce_rollout, run_id, req.worker_id, req.epoch, url=req.url, secret=req.secret,
                      version=req.version, pool=[p.model_dump() for p in req.pool])


@router.get("/api/v1/runs/{run_id}/rollout", response_model=RolloutEndpoint, dependencies=[ROLLOUT],
            responses=errors(*AUTHED, NotFound))
async def rollout_endpoint(run_id: RunIdPath, store: StoreDep) -> dict[str, Any]:
    """Where the run's rollout manager is now: only while the run is running under the epoch that
    announced it; otherwise 404 saying why (not announced yet, queued or handed off, ended)."""
    return await call(store.rollout_endpoint, run_id)


@router.get("/api/v1/runs/{run_id}/rollout/pool", response_model=RolloutPool, dependencies=[READ],
            responses=errors(*AUTHED, NotFound))
async def rollout_pool(run_id: RunIdPath, store: StoreDep) -> dict[str, Any]:
    """The pool the run's rollout manager last reported; 404, saying why, while it has none."""
    endpoint = await call(store.rollout_endpoint, run_id)
    return {k: v for k, v in endpoint.items() if k in RolloutPool.model_fields}


@router.get("/api/v1/rollout/runs", response_model=list[RolloutRun], dependencies=[ROLLOUT],
            responses=errors(*AUTHED))
async def rollout_runs(store: StoreDep) -> list[dict[str, Any]]:
    """Running runs whose rollout manager is up, fewest rollout workers first."""
    return await call(store.rollout_runs)


@router.put("/api/v1/rollout/workers/{worker_id}", response_model=RolloutWorkerInfo, dependencies=[ROLLOUT],
            responses=errors(*AUTHED, NotFound, *BODY))
async def register_rollout_worker(worker_id: WorkerIdPath, req: RegisterRolloutWorker,
                                  store: StoreDep) -> dict[str, Any]:
    """Create or refresh a rollout worker (call it again as a heartbeat). 404 if ``run_id`` names no run."""
    if req.worker_id != worker_id:
        raise RequestInvalid(f"worker_id: the body names {req.worker_id!r} but the path {worker_id!r}")
    return await call(store.register_rollout_worker, worker_id, labels=req.labels, run_id=req.run_id)


@router.get("/api/v1/rollout/workers", response_model=list[RolloutWorkerInfo], dependencies=[READ],
            responses=errors(*AUTHED))
async def list_rollout_workers(store: StoreDep) -> list[dict[str, Any]]:
    return await call(store.list_rollout_workers)
