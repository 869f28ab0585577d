"""What every route takes: the store, the authenticator's scopes, telemetry and the claim wakeup,
all from the app's state (:func:`relaytrain.commander.app.create_app` puts them there), the
path parameters, and the error answers a route declares in the OpenAPI document."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Request
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


async def _admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    auth: Authenticator = request.app.state.auth
    return await auth.require_async(authorization, "admin")


async def _worker(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    auth: Authenticator = request.app.state.auth
    return await auth.require_async(authorization, "worker")


async def _rollout(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    auth: Authenticator = request.app.state.auth
    return await auth.require_async(authorization, "rollout")


async def _viewer(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    auth: Authenticator = request.app.state.auth
    return await auth.require_async(authorization, "viewer")


StoreDep = Annotated[Store, Depends(_store)]
TelemetryDep = Annotated[Telemetry, Depends(_telemetry)]
WakeupDep = Annotated[Wakeup, Depends(_wakeup)]
ADMIN = Depends(_admin)
"""Admin scope: every endpoint but the workers'."""
WORKER = Depends(_worker)
"""Worker scope (admin reaches it too)."""
ROLLOUT = Depends(_rollout)
"""Rollout scope: a rollout worker's discovery endpoints, and nothing else (admin reaches them too)."""
READ = Depends(_viewer)
"""Viewer scope: the GET endpoints the dashboard reads (admin reaches them too)."""
ReadScope = Annotated[str, READ]
"""The scope of a request admitted by :data:`READ` (``admin`` or ``viewer``), for a route whose
answer depends on it (a viewer sees run configs redacted)."""

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
