"""What every route takes: the store, the authenticator's scopes, telemetry and the claim wakeup,
all from the app's state (:func:`relaytrain.commander.app.create_app` puts them there), the
path parameters, and the error answers a route declares in the OpenAPI document."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Annotated, Any

import fastapi.routing
from fastapi import Depends, FastAPI, Header, Path, Request
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from relaytrain.api import models as m
from relaytrain.config import HOST_NAME_PATTERN, RUN_ID_PATTERN
from relaytrain.errors import (
    AuthError,
    BadRequest,
    ConfigError,
    Forbidden,
    InvalidState,
    LeaseLost,
    NotFound,
    PayloadTooLarge,
    RelayError,
    RequestInvalid,
    RunExists,
    StoreError,
    error_classes,
)

from ..auth import Authenticator
from ..store import Store
from ..telemetry import Telemetry


class Wakeup:
    """Wakes long-polling claims when a run may have become claimable on this replica; a claim
    also looks again every ``poll_s`` (for runs that other replicas freed)."""

    def __init__(self, poll_s: float) -> None:
        self.poll_s = poll_s
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        """Until notified, ``poll_s`` or ``timeout`` seconds, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), min(self.poll_s, timeout))


# Dependencies are coroutines: a plain function would be sent to the thread pool on every request.


async def _store(request: Request) -> Store:
    return request.app.state.store


async def _telemetry(request: Request) -> Telemetry:
    return request.app.state.telemetry


async def _wakeup(request: Request) -> Wakeup:
    return request.app.state.wakeup


async def _unschedulable_after(request: Request) -> float:
    return request.app.state.unschedulable_after_s


class Access:
    """A route's scope decision: the token scopes it admits (admin is admitted everywhere:
    :class:`relaytrain.commander.auth.Authenticator`), or none at all for an open route. Every
    route of the app takes exactly one, as a dependency (:data:`ADMIN`, :data:`SUBMIT`,
    :data:`WORKER`, :data:`ROLLOUT`, :data:`READ`, :data:`OPEN`); :func:`check_access` refuses an
    app with a route that has none, so a new route cannot forget to decide."""

    def __init__(self, name: str, scopes: frozenset[str] | None) -> None:
        self.name = name
        self.scopes = scopes
        """None: open, no token needed (:class:`_Open`)."""

    def __repr__(self) -> str:
        return f"Access({self.name})"

    async def __call__(self, request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
        auth: Authenticator = request.app.state.auth
        return await auth.require_async(authorization, self.scopes)


class _Open(Access):
    """The decision to need no token (it reads no header)."""

    async def __call__(self) -> None:  # type: ignore[override]
        return None


StoreDep = Annotated[Store, Depends(_store)]
TelemetryDep = Annotated[Telemetry, Depends(_telemetry)]
WakeupDep = Annotated[Wakeup, Depends(_wakeup)]
ADMIN_ONLY = Access("admin", frozenset())
SUBMITTERS = Access("submit", frozenset({"submit"}))
WORKERS = Access("worker", frozenset({"worker"}))
ROLLOUT_WORKERS = Access("rollout", frozenset({"rollout"}))
READERS = Access("read", frozenset({"submit", "viewer"}))
ANYONE = _Open("open", None)
ACCESSES = (ADMIN_ONLY, SUBMITTERS, WORKERS, ROLLOUT_WORKERS, READERS, ANYONE)
"""Every scope decision a route can take."""
ADMIN = Depends(ADMIN_ONLY)
"""Admin scope only: tokens, hosts changed, Prometheus metrics."""
SUBMIT = Depends(SUBMITTERS)
"""Submit scope: submitting, cancelling and resuming runs (``kind: command`` runs are code that
workers run: only admin and submit tokens may queue them)."""
WORKER = Depends(WORKERS)
"""Worker scope: the worker endpoints."""
ROLLOUT = Depends(ROLLOUT_WORKERS)
"""Rollout scope: a rollout worker's discovery endpoints, and nothing else."""
READ = Depends(READERS)
"""Viewer and submit scopes: the GET endpoints the dashboard reads."""
OPEN = Depends(ANYONE)
"""No token: the health check and the dashboard's page (they hold no data)."""
UnschedulableAfterDep = Annotated[float, Depends(_unschedulable_after)]
"""The commander's grace before a queued run nobody can take is shown unschedulable."""
ReadScope = Annotated[str, READ]
"""The scope of a request admitted by :data:`READ` (``admin``, ``submit`` or ``viewer``), for a route
whose answer depends on it (a viewer sees run configs redacted)."""


def app_routes(app: FastAPI) -> list[Any]:
    """Every route of ``app``, those of included routers too, each with its full ``path``,
    ``methods`` and, for an API route, ``dependant`` (its own dependencies and its routers').
    FastAPI from 0.16x keeps an included router as one entry of ``app.routes``, opened by
    ``iter_route_contexts``; earlier versions copy its routes into ``app.routes``."""
    opened = getattr(fastapi.routing, "iter_route_contexts", None)
    return list(opened(app.routes)) if opened is not None else list(app.routes)


def is_api_route(route: Any) -> bool:
    """An endpoint of ours, not a mount or FastAPI's own documentation pages."""
    return isinstance(getattr(route, "original_route", route), APIRoute)


def route_access(route: Any) -> Access:
    """The one scope decision an API route (of :func:`app_routes`) takes; ValueError if it takes
    none, or several."""
    found: set[Access] = set()
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        if isinstance(dependant.call, Access):
            found.add(dependant.call)
        pending.extend(dependant.dependencies)
    if len(found) != 1:
        methods = ",".join(sorted(route.methods))
        what = "no scope decision" if not found else f"several scope decisions ({', '.join(map(repr, found))})"
        raise ValueError(f"route {methods} {route.path} takes {what}: give it exactly one of "
                         f"{', '.join(a.name for a in ACCESSES)} (relaytrain.commander.routes.deps)")
    return found.pop()


def check_access(app: FastAPI) -> None:
    """Refuse to build an app with a route that does not say who may call it."""
    for route in app_routes(app):
        if is_api_route(route):
            route_access(route)


RunIdPath = Annotated[str, Path(pattern=RUN_ID_PATTERN, max_length=128, description="The run's id.")]
WorkerIdPath = Annotated[str, Path(pattern=m.WORKER_ID_PATTERN, max_length=128, description="The worker's id.")]
HostNamePath = Annotated[str, Path(pattern=HOST_NAME_PATTERN, max_length=64, description="The host's name.")]


SERVED: tuple[type[RelayError], ...] = (BadRequest, AuthError, Forbidden, NotFound, LeaseLost, RunExists, InvalidState,
                                        ConfigError, RequestInvalid, PayloadTooLarge, StoreError)
"""The errors the commander answers requests with (others would be 500s: bugs)."""
_SERVED = {c.__name__ for c in SERVED}


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a store call on the thread pool (it blocks on the database)."""
    return await run_in_threadpool(fn, *args, **kwargs)


_WHEN = {
    400: "The request body is not JSON.",
    401: "No token, or an unknown one.",
    403: "The token's scope does not reach this endpoint.",
    404: "No such object.",
    409: "Refused: conflicts with the object's state (for a worker: its lease is lost; stop now).",
    413: "The request body is too large.",
    422: "The request does not match this schema, or breaks a rule the schema cannot say.",
    503: "The commander's database is unavailable; retry.",
}
AUTHED = (AuthError, Forbidden)
"""The errors of every endpoint behind a token."""
BODY = (BadRequest, PayloadTooLarge)
"""The errors of every endpoint that reads a body."""


def errors(*classes: type[RelayError]) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that answers these errors (and, as every route, 422 and 503),
    all with the one error body :class:`relaytrain.api.models.ErrorBody`; each status lists the
    error classes answered with it."""
    statuses = sorted({c.http_status for c in (*classes, RequestInvalid, StoreError)})
    named = error_classes().values()
    return {
        status: {"model": m.ErrorBody, "description": _WHEN[status] + " Error: "
                 + ", ".join(c.__name__ for c in named if c.http_status == status and c.__name__ in _SERVED)}
        for status in statuses
    }
