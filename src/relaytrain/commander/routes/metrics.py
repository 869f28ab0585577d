"""Metrics: a run's training metric series and their names (viewer scope), the commander's own in Prometheus format
(``/metrics``, admin scope), and its health (``/api/v1/health``, open)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from relaytrain import __version__
from relaytrain.api import models as m
from relaytrain.errors import NotFound

from ..store.metrics import MAX_POINTS, MIN_POINTS
from .deps import ADMIN, AUTHED, OPEN, READ, RunIdPath, StoreDep, TelemetryDep, call, errors

router = APIRouter(tags=["metrics"])

NAMES_PATTERN = r"^[^,\x00-\x1f]+(,[^,\x00-\x1f]+)*$"
"""``name``: metric names separated by commas, none empty, no control character (PostgreSQL
refuses a NUL in a text parameter)."""


@router.get("/api/v1/runs/{run_id}/metrics", response_model=m.MetricList, dependencies=[READ],
            responses=errors(*AUTHED, NotFound))
async def run_metrics(
    run_id: RunIdPath,
    store: StoreDep,
    name: Annotated[str | None, Query(min_length=1, max_length=4096, pattern=NAMES_PATTERN,
                                      description="Comma-separated metric names; none: all.")] = None,
    include_superseded: Annotated[bool, Query(description="Also the points later attempts retrained.")] = False,
    max_points: Annotated[int | None, Query(ge=MIN_POINTS, le=MAX_POINTS, description=(
        "At most this many points per series, downsampled on the server (min/max buckets; the "
        "first and last point kept); none: every point."))] = None,
) -> dict[str, Any]:
    """A run's metric series across all its attempts, ordered by name, then step. Points that an
    attempt reported past the step a later attempt resumed from are superseded: each step shows
    once unless ``include_superseded``."""
    names = None if name is None else name.split(",")
    return {"items": await call(store.list_metrics, run_id, names=names, include_superseded=include_superseded,
                                max_points=max_points)}


@router.get("/api/v1/runs/{run_id}/metrics/names", response_model=m.MetricNames, dependencies=[READ],
            responses=errors(*AUTHED, NotFound))
async def run_metric_names(run_id: RunIdPath, store: StoreDep) -> dict[str, Any]:
    """The names of a run's metrics, sorted."""
    return {"names": await call(store.metric_names, run_id)}


@router.get("/metrics", dependencies=[ADMIN], response_class=Response, tags=["service"],
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **errors(*AUTHED)})
async def prometheus(telemetry: TelemetryDep) -> Response:
    body = await call(telemetry.render)
    return Response(body, media_type="text/plain; version=0.0.4")


@router.get("/api/v1/health", response_model=m.Health, tags=["service"], dependencies=[OPEN], responses=errors())
async def health(store: StoreDep) -> dict[str, Any]:
    await call(store.ping)
    return {"status": "ok", "version": __version__, "database": store.dialect}
