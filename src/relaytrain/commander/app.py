"""The commander's HTTP API (``/api/v1``): runs, workers, leases, checkpoints, metrics.

Every endpoint but ``/api/v1/health`` needs a bearer token; worker tokens reach only the
worker endpoints. Every mutating worker call carries ``(worker_id, epoch)`` and is refused
with 409, changing nothing, unless that epoch holds the run's live lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from relaytrain import __version__
from relaytrain.api import models as m
from relaytrain.config import RUN_ID_PATTERN, RUN_UNION, RunConfig, format_validation_error
from relaytrain.errors import (
    AuthError,
    BadRequest,
    ConfigError,
    Forbidden,
    InvalidState,
    LeaseLost,
    NotFound,
    RelayError,
    RunExists,
    StoreError,
)

from .auth import Authenticator
from .hosts import HostsSettings, start_host_tasks, stop_host_tasks
from .hosts_api import make_router
from .store import Store
from .telemetry import Telemetry

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
STATUS_OF: dict[type[RelayError], int] = {
    NotFound: 404,
    LeaseLost: 409,
    RunExists: 409,
    InvalidState: 409,
    ConfigError: 422,
    BadRequest: 400,
    AuthError: 401,
    Forbidden: 403,
    StoreError: 503,
}

RunIdPath = Annotated[str, Path(pattern=RUN_ID_PATTERN, max_length=128, description="The run's id.")]
WorkerIdPath = Annotated[str, Path(pattern=m.WORKER_ID_PATTERN, max_length=128)]


class _Wakeup:
    """Wakes long-polling claims when a run may have become claimable on this replica."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)


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
            response = JSONResponse(
                {"error": "PayloadTooLarge", "detail": f"request body over {limit} bytes"}, status_code=413
            )
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


def create_app(
    store: Store,
    *,
    admin_token: str | None = None,
    sweep_interval_s: float = 5.0,
    claim_poll_s: float = 0.5,
    max_body_bytes: int = MAX_BODY_BYTES,
    hosts: HostsSettings | None = None,
) -> FastAPI:
    """The commander as an ASGI app over ``store`` (already migrated). With ``hosts``, it also
    polls SSH hosts' GPUs and starts workers on them (``relay serve --poll-hosts``)."""
    auth = Authenticator(store, admin_token)
    telemetry = Telemetry(store)
    wakeup: list[_Wakeup] = []

    def notify() -> None:
        if wakeup:
            wakeup[0].notify()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        wakeup.append(_Wakeup())
        sweeper = asyncio.create_task(_sweep(store, sweep_interval_s, notify))
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
    app.state.store = store
    app.state.telemetry = telemetry

    # async: a cached token is checked on the event loop, without a hop to the thread pool
    async def admin(authorization: Annotated[str | None, Header()] = None) -> str:
        return await auth.require_async(authorization, "admin")

    async def worker(authorization: Annotated[str | None, Header()] = None) -> str:
        return await auth.require_async(authorization, "worker")

    Admin = Depends(admin)
    Worker = Depends(worker)
    app.include_router(make_router(store, Admin))

    @app.exception_handler(RelayError)
    async def relay_error(_request: Request, exc: RelayError) -> JSONResponse:
        status = next((code for cls, code in STATUS_OF.items() if isinstance(exc, cls)), 500)
        if status == 409:
            telemetry.counts["fenced"] += 1
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = format_validation_error(exc, hidden=("body", "query", "path", "header"), unions=RUN_UNION,
                                         top="body")
        return JSONResponse({"error": "ValidationError", "detail": detail}, status_code=422)

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await run_in_threadpool(fn, *args, **kwargs)

    # -- service -----------------------------------------------------------------------------

    @app.get("/api/v1/health", response_model=m.Health, tags=["service"])
    async def health() -> dict:
        await call(store.ping)
        return {"status": "ok", "version": __version__, "database": store.dialect}

    @app.get("/metrics", tags=["service"], dependencies=[Admin], response_class=Response)
    async def prometheus() -> Response:
        body = await call(telemetry.render)
        return Response(body, media_type="text/plain; version=0.0.4")

    @app.post("/api/v1/tokens", response_model=m.TokenCreated, tags=["service"], dependencies=[Admin])
    async def create_token(req: m.TokenCreate) -> dict:
        token = await call(store.create_token, req.name, req.scope)
        return {"name": req.name, "scope": req.scope, "token": token}

    # -- runs --------------------------------------------------------------------------------

    @app.post("/api/v1/runs", response_model=m.RunDetail, status_code=201, tags=["runs"], dependencies=[Admin])
    async def submit_run(config: Annotated[RunConfig, Body()]) -> dict:
        run = await call(store.submit_run, config)
        notify()
        return run

    @app.get("/api/v1/runs", response_model=m.RunList, tags=["runs"], dependencies=[Admin])
    async def list_runs(
        status: m.RunStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    ) -> dict:
        return await call(store.list_runs, status=status, limit=limit, offset=offset)

    @app.get("/api/v1/runs/{run_id}", response_model=m.RunDetail, tags=["runs"], dependencies=[Admin])
    async def get_run(run_id: RunIdPath) -> dict:
        return await call(store.get_run, run_id)

    @app.post("/api/v1/runs/{run_id}/cancel", response_model=m.RunDetail, tags=["runs"], dependencies=[Admin])
    async def cancel_run(run_id: RunIdPath) -> dict:
        return await call(store.cancel_run, run_id)

    @app.post("/api/v1/runs/{run_id}/resume", response_model=m.RunDetail, tags=["runs"], dependencies=[Admin])
    async def resume_run(run_id: RunIdPath, req: m.ResumeRequest) -> dict:
        run = await call(store.reopen_run, run_id, from_step=req.from_step, additional_steps=req.additional_steps)
        notify()
        return run

    @app.get("/api/v1/runs/{run_id}/ledger", response_model=m.RunLedger, tags=["runs"], dependencies=[Admin])
    async def run_ledger(run_id: RunIdPath) -> dict:
        return await call(store.run_ledger, run_id)

    @app.get("/api/v1/ledger", response_model=m.ProviderLedger, tags=["runs"], dependencies=[Admin])
    async def ledger() -> dict:
        return await call(store.provider_ledger)

    @app.get("/api/v1/runs/{run_id}/events", response_model=m.EventList, tags=["runs"], dependencies=[Admin])
    async def run_events(
        run_id: RunIdPath,
        after: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict:
        return await call(store.list_events, run_id, after=after, limit=limit)

    @app.get("/api/v1/runs/{run_id}/checkpoints", response_model=m.CheckpointList, tags=["runs"],
             dependencies=[Admin])
    async def run_checkpoints(run_id: RunIdPath) -> dict:
        return {"items": await call(store.list_checkpoints, run_id)}

    @app.get("/api/v1/runs/{run_id}/metrics", response_model=m.MetricList, tags=["runs"], dependencies=[Admin])
    async def run_metrics(
        run_id: RunIdPath,
        name: Annotated[str | None, Query(max_length=128)] = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    ) -> dict:
        return {"items": await call(store.list_metrics, run_id, name=name, limit=limit)}

    # -- workers -----------------------------------------------------------------------------

    @app.post("/api/v1/workers/register", response_model=m.WorkerInfo, tags=["workers"], dependencies=[Worker])
    async def register_worker(req: m.RegisterWorker) -> dict:
        return await call(
            store.register_worker,
            req.worker_id,
            provider=req.provider,
            hostname=req.hostname,
            version=req.version,
            resources=req.resources.model_dump(mode="json"),
        )

    @app.post("/api/v1/workers/{worker_id}/heartbeat", response_model=m.WorkerInfo, tags=["workers"],
              dependencies=[Worker])
    async def heartbeat(worker_id: WorkerIdPath, req: m.Heartbeat) -> dict:
        resources = req.resources.model_dump(mode="json") if req.resources else None
        return await call(store.heartbeat, worker_id, resources=resources)

    @app.get("/api/v1/workers", response_model=list[m.WorkerInfo], tags=["workers"], dependencies=[Admin])
    async def list_workers() -> list:
        return await call(store.list_workers)

    # -- leases ------------------------------------------------------------------------------

    @app.post("/api/v1/leases/claim", response_model=m.ClaimResponse, tags=["leases"], dependencies=[Worker])
    async def claim(req: m.ClaimRequest) -> dict:
        telemetry.counts["claims"] += 1
        deadline = time.monotonic() + req.wait_s
        while True:
            grant = await call(
                store.claim_run,
                req.worker_id,
                gpus=len(req.resources.gpus),
                labels=req.resources.labels,
                kinds=req.kinds,
                price_per_hour=req.resources.price_per_hour,
            )
            left = deadline - time.monotonic()
            if grant is not None or left <= 0:
                break
            await wakeup[0].wait(min(claim_poll_s, left))
        if grant is not None:
            telemetry.counts["grants"] += 1
        return {"grant": grant}

    @app.post("/api/v1/runs/{run_id}/lease/renew", response_model=m.RenewResponse, tags=["leases"],
              dependencies=[Worker])
    async def renew(run_id: RunIdPath, req: m.LeaseRef) -> dict:
        result = await call(store.renew_lease, run_id, req.worker_id, req.epoch)
        telemetry.counts["renewals"] += 1
        return result

    @app.post("/api/v1/runs/{run_id}/lease/release", response_model=m.ReleaseResponse, tags=["leases"],
              dependencies=[Worker])
    async def release(run_id: RunIdPath, req: m.ReleaseRequest) -> dict:
        result = await call(
            store.release_lease,
            run_id,
            req.worker_id,
            req.epoch,
            outcome=req.outcome,
            failure_class=req.failure_class,
            message=req.message,
            stderr_tail=req.stderr_tail,
            step=req.step,
        )
        telemetry.counts["releases"] += 1
        notify()
        return result

    @app.post("/api/v1/runs/{run_id}/lease/resumed", tags=["leases"], dependencies=[Worker])
    async def resumed(run_id: RunIdPath, req: m.ResumeReport) -> dict:
        await call(store.record_resume, run_id, req.worker_id, req.epoch, step=req.step, note=req.note)
        return {"step": req.step}

    @app.post("/api/v1/runs/{run_id}/progress", tags=["leases"], dependencies=[Worker])
    async def progress(run_id: RunIdPath, req: m.ProgressRequest) -> dict:
        step = await call(
            store.record_progress, run_id, req.worker_id, req.epoch, [p.model_dump() for p in req.points]
        )
        return {"step": step}

    @app.post("/api/v1/runs/{run_id}/checkpoints", response_model=m.CheckpointRef, tags=["leases"],
              dependencies=[Worker])
    async def commit_checkpoint(run_id: RunIdPath, req: m.CheckpointCommit) -> dict:
        return await call(
            store.commit_checkpoint,
            run_id,
            req.worker_id,
            req.epoch,
            step=req.step,
            uri=req.uri,
            manifest_sha256=req.manifest_sha256,
            revision=req.revision,
        )

    app.add_middleware(_MiddlewareAdapter, wrap=lambda inner: _body_limit(inner, max_body_bytes))
    app.add_middleware(_MiddlewareAdapter, wrap=telemetry.middleware)
    return app


class _MiddlewareAdapter:
    """Lets plain ASGI wrapper functions be added with ``app.add_middleware``."""

    def __init__(self, app: Any, wrap: Callable[[Any], Any]) -> None:
        self._app = wrap(app)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self._app(scope, receive, send)


async def _sweep(store: Store, interval_s: float, notify: Callable[[], None]) -> None:
    """Expire leases past their deadline every ``interval_s`` (claims also do it lazily)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            if await run_in_threadpool(store.expire_leases):
                notify()
        except Exception:  # a database hiccup must not end the sweeper; it is logged and retried
            log.exception("lease sweeper failed; retrying in %.1f s", interval_s)
