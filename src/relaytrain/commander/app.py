"""The commander's HTTP API (``/api/v1``): runs, workers, leases, checkpoints, metrics; and the
dashboard at ``/``.

Every endpoint but ``/api/v1/health`` and the dashboard's static files needs a bearer token;
each route says which scopes reach it (:mod:`relaytrain.commander.routes.deps`), and the app
refuses to start with a route that does not.
Every mutating worker call carries ``(worker_id, epoch)`` and is refused
with 409, changing nothing, unless that epoch holds the run's live lease.

The routes live in :mod:`relaytrain.commander.routes`, one router per resource; this module
assembles them with the store, the authenticator, telemetry, the error answers and the
background tasks (the lease sweeper, and with ``hosts`` the GPU poller and autoscaler).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from relaytrain import UNSCHEDULABLE_AFTER_S, __version__
from relaytrain.api.models import TOKEN_CACHE_S
from relaytrain.config import RUN_UNION, format_validation_error
from relaytrain.errors import BadRequest, LeaseLost, PayloadTooLarge, RelayError, RequestInvalid, StoreError

from .auth import Authenticator
from .hosts import HostsSettings, start_host_tasks, stop_host_tasks
from .routes import ROUTERS
from .routes.dashboard import UI_PREFIX, static_files
from .routes.deps import Wakeup, app_routes, check_access, is_api_route
from .store import Store, stale_after
from .telemetry import Telemetry

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20


def create_app(
    store: Store,
    *,
    admin_token: str | None = None,
    sweep_interval_s: float = 5.0,
    claim_poll_s: float = 0.5,
    max_body_bytes: int = MAX_BODY_BYTES,
    hosts: HostsSettings | None = None,
    auth_cache_s: float = TOKEN_CACHE_S,
    unschedulable_after_s: float = UNSCHEDULABLE_AFTER_S,
) -> FastAPI:
    """The commander as an ASGI app over ``store`` (already migrated). With ``hosts``, it also
    polls SSH hosts' GPUs and starts workers on them (``relay serve --poll-hosts``). A token
    revoked in the database is refused within ``auth_cache_s``. A queued run that nobody can take
    is shown ``unschedulable`` after ``unschedulable_after_s`` (:mod:`relaytrain.commander.store.schedulable`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.wakeup = Wakeup(claim_poll_s)
        stale_after_s = stale_after(sweep_interval_s)
        # Before the first claim or renewal: leases interrupted by an outage are extended first.
        await _sweep_once(store, stale_after_s, app.state.wakeup.notify)
        sweeper = asyncio.create_task(_sweep(store, sweep_interval_s, stale_after_s, app.state.wakeup.notify))
        host_tasks = start_host_tasks(store, hosts) if hosts is not None else []
        try:
            yield
        finally:
            await stop_host_tasks(host_tasks)
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    app = FastAPI(
        title="relaytrain commander",
        version=__version__,
        description="Leases runs to workers with fencing epochs. See DESIGN §4.",
        lifespan=lifespan,
    )
    telemetry = Telemetry(store)
    app.state.store = store
    app.state.unschedulable_after_s = unschedulable_after_s
    app.state.auth = Authenticator(store, admin_token, cache_s=auth_cache_s)
    app.state.telemetry = telemetry
    for router in ROUTERS:
        app.include_router(router)
    check_access(app)
    app.mount(UI_PREFIX, static_files(), name="ui")
    app.add_exception_handler(RelayError, _relay_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(_MiddlewareAdapter, wrap=lambda inner: _body_limit(inner, max_body_bytes))
    app.add_middleware(_MiddlewareAdapter, wrap=telemetry.middleware)
    return app


def _error_response(exc: RelayError) -> JSONResponse:
    """The one error body (:class:`relaytrain.api.models.ErrorBody`), with the class's status."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
    return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=exc.http_status,
                        headers=headers)


async def _relay_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RelayError)
    if exc.http_status == LeaseLost.http_status:
        request.app.state.telemetry.counts["fenced"] += 1
    return _error_response(exc)


async def _invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    """A request the schema refuses: one ``field.path: message`` line per problem."""
    assert isinstance(exc, RequestValidationError)
    detail = format_validation_error(exc, hidden=("body", "query", "path", "header"), unions=RUN_UNION, top="body")
    return _error_response(RequestInvalid(detail))


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own answers: a body that is not JSON (400) in the one error body; a 405's
    ``Allow`` naming every method of the path, not only those of the first route matched."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == BadRequest.http_status:
        return _error_response(BadRequest(f"the request body is not valid JSON: {exc.detail}"))
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        path = request.scope["path"]
        methods = {m for r in app_routes(request.app) if is_api_route(r)
                   and compile_path(r.path)[0].match(path) for m in r.methods}
        headers["Allow"] = ", ".join(sorted(methods))
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


def _body_limit(app: Any, limit: int) -> Any:
    """ASGI middleware answering 413 to a request body over ``limit`` bytes, read or declared."""

    async def limited(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > limit
        chunks: list[bytes] = []
        size = 0
        while not too_big:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            too_big = size > limit
            if not message.get("more_body"):
                break
        if too_big:
            response = _error_response(PayloadTooLarge(f"request body over {limit} bytes"))
            await response(scope, receive, send)
            return
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await app(scope, replay, send)

    return limited


class _MiddlewareAdapter:
    """Lets plain ASGI wrapper functions be added with ``app.add_middleware``."""

    def __init__(self, app: Any, wrap: Callable[[Any], Any]) -> None:
        self._app = wrap(app)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self._app(scope, receive, send)


async def _sweep(store: Store, interval_s: float, stale_after_s: float, notify: Callable[[], None]) -> None:
    """Every ``interval_s``: extend the leases an outage interrupted, expire those past their
    deadline (claims also do both, lazily), and beat (:meth:`Store.sweep`)."""
    while True:
        await asyncio.sleep(interval_s)
        await _sweep_once(store, stale_after_s, notify)


async def _sweep_once(store: Store, stale_after_s: float, notify: Callable[[], None]) -> None:
    try:
        if await run_in_threadpool(store.sweep, stale_after_s=stale_after_s):
            notify()
    except StoreError as exc:  # the database is down or restarting: one line a sweep, not a traceback
        log.warning("lease sweeper: %s; retrying", exc)
    except Exception:  # a bug must not end the sweeper either; it is logged in full and retried
        log.exception("lease sweeper failed; retrying")
