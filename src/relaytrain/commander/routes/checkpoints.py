"""``/api/v1/runs/{run_id}/checkpoints``: a run's durable checkpoints (viewer scope); the holder commits
one under its lease (worker scope, fenced like every lease call)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from relaytrain.api import models as m
from relaytrain.errors import LeaseLost, NotFound

from .deps import AUTHED, BODY, READ, WORKER, RunIdPath, StoreDep, call, errors

router = APIRouter(prefix="/api/v1/runs/{run_id}/checkpoints", tags=["checkpoints"])


@router.get("", response_model=m.CheckpointList, dependencies=[READ], responses=errors(*AUTHED, NotFound))
async def run_checkpoints(run_id: RunIdPath, store: StoreDep) -> dict[str, Any]:
    return {"items": await call(store.list_checkpoints, run_id)}


@router.post("", response_model=m.CheckpointRef, dependencies=[WORKER],
             responses=errors(*AUTHED, NotFound, LeaseLost, *BODY))
async def commit_checkpoint(run_id: RunIdPath, req: m.CheckpointCommit, store: StoreDep) -> dict[str, Any]:
    """Record a checkpoint that is durable in the run's store (idempotent for one epoch and step)."""
    return await call(store.commit_checkpoint, run_id, req.worker_id, req.epoch, step=req.step, uri=req.uri,
                      manifest_sha256=req.manifest_sha256, revision=req.revision)
