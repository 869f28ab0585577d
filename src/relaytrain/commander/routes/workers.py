"""``/api/v1/workers``: workers register and heartbeat (worker scope); the list is the viewer scope's."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from relaytrain.api import models as m
from relaytrain.errors import NotFound

from .deps import AUTHED, BODY, READ, WORKER, StoreDep, WorkerIdPath, call, errors

router = APIRouter(prefix="/api/v1/workers", tags=["workers"])


@router.post("/register", response_model=m.WorkerInfo, dependencies=[WORKER],
             responses=errors(*AUTHED, *BODY))
async def register_worker(req: m.RegisterWorker, store: StoreDep) -> dict[str, Any]:
    return await call(store.register_worker, req.worker_id, provider=req.provider, hostname=req.hostname,
                      version=req.version, resources=req.resources.model_dump(mode="json"), kinds=req.kinds)


@router.post("/{worker_id}/heartbeat", response_model=m.WorkerInfo, dependencies=[WORKER],
             responses=errors(*AUTHED, NotFound, *BODY))
async def heartbeat(worker_id: WorkerIdPath, req: m.Heartbeat, store: StoreDep) -> dict[str, Any]:
    """404 until the worker registered. ``health``: the worker's machine is ok, or degraded (and why)."""
    resources = req.resources.model_dump(mode="json") if req.resources else None
    health = req.health.model_dump(mode="json") if req.health else None
    return await call(store.heartbeat, worker_id, resources=resources, health=health)


@router.get("", response_model=list[m.WorkerInfo], dependencies=[READ], responses=errors(*AUTHED))
async def list_workers(store: StoreDep) -> list[dict[str, Any]]:
    return await call(store.list_workers)
