"""Central logs: the holder ships its trainer's stdout and stderr (worker scope, fenced by the
epoch like progress); anyone with an admin or viewer token reads them, per attempt, from any machine
(``relay logs``). The offsets, the per-attempt cap and ``dropped``: :mod:`relaytrain.commander.store.logs`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from relaytrain.api import models as m
from relaytrain.errors import LeaseLost, NotFound

from .deps import AUTHED, BODY, READ, WORKER, RunIdPath, StoreDep, call, errors

router = APIRouter(prefix="/api/v1/runs/{run_id}/logs", tags=["logs"])


@router.post("", response_model=m.LogAck, dependencies=[WORKER],
             responses=errors(*AUTHED, NotFound, LeaseLost, *BODY))
async def append_logs(run_id: RunIdPath, req: m.LogAppend, store: StoreDep) -> dict[str, Any]:
    """Store chunks of the holder's trainer output; a chunk already stored (a batch sent again) is
    skipped. The attempt keeps the run's ``logs.max_bytes`` at most, dropping its oldest chunks."""
    chunks = [c.model_dump() for c in req.chunks]
    return await call(store.append_logs, run_id, req.worker_id, req.epoch, chunks)


@router.get("", response_model=m.LogList, dependencies=[READ], responses=errors(*AUTHED, NotFound))
async def read_logs(
    run_id: RunIdPath,
    store: StoreDep,
    attempt: Annotated[int | None, Query(ge=1, le=2**31 - 1, description="The attempt's epoch; default: "
                                         "the run's latest attempt.")] = None,
    after: Annotated[int, Query(ge=0, le=m.LOG_OFFSET_MAX, description="Chunks that start at or after this offset "
                                "(pass the last answer's ``next``).")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="The most chunks to return.")] = 200,
) -> dict[str, Any]:
    """One attempt's trainer output, oldest first, both streams in the order the worker read them."""
    return await call(store.list_logs, run_id, attempt=attempt, after=after, limit=limit)
