"""``/api/v1/runs/{run_id}/evaluations``: the eval runs of a run and their scores (viewer scope).
An eval run is submitted like any run (``POST /api/v1/runs``, built by
:func:`relaytrain.api.evals.build_eval_run`), or queued by the commander for a durable checkpoint."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from relaytrain.api import models as m
from relaytrain.errors import NotFound

from .deps import AUTHED, READ, RunIdPath, StoreDep, call, errors

router = APIRouter(prefix="/api/v1/runs/{run_id}/evaluations", tags=["evals"], dependencies=[READ])


@router.get("", response_model=list[m.Evaluation], responses=errors(*AUTHED, NotFound))
async def run_evaluations(run_id: RunIdPath, store: StoreDep) -> list[dict[str, Any]]:
    return await call(store.list_evaluations, run_id)
