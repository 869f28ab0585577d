"""Metrics: a run's training metrics (admin scope), the commander's own in Prometheus format
(``/metrics``, admin scope), and its health (``/api/v1/health``, open)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from relaytrain import __version__
from relaytrain.api import models as m
from relaytrain.errors import NotFound

from .deps import ADMIN, AUTHED, RunIdPath, StoreDep, TelemetryDep, call, errors

router = APIRouter(tags=["metrics"])


@router.get("/api/v1/runs/{run_id}/metrics", response_model=m.MetricList, dependencies=[ADMIN],
            responses=errors(*AUTHED, NotFound))
async def run_metrics(
    run_id: RunIdPath,
    store: StoreDep,
    name: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> dict[str, Any]:
    """The newest ``limit`` points (of metric ``name``), oldest first."""
    return {"items": await call(store.list_metrics, run_id, name=name, limit=limit)}


@router.get("/metrics", dependencies=[ADMIN], response_class=Response, tags=["service"],
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **errors(*AUTHED)})
async def prometheus(telemetry: TelemetryDep) -> Response:
    body = await call(telemetry.render)
    return Response(body, media_type="text/plain; version=0.0.4")


@router.get("/api/v1/health", response_model=m.Health, tags=["service"], responses=errors())
async def health(store: StoreDep) -> dict[str, Any]:
    await call(store.ping)
    return {"status": "ok", "version": __version__, "database": store.dialect}
