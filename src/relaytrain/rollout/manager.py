"""The rollout manager: an HTTP server in the GRPO trainer's process that hands prompt groups to
rollout workers, takes their completions back, and serves the policy's weights by version.

The API is ``relaytrain.rollout.protocol`` (paths, wire types, status codes). The trainer owns the
manager: it builds a ``GroupBook`` (``rollout.queue``), starts the manager, publishes weights after
optimizer steps (``publish_weights``), and takes ready groups from the book. Torch-free: weights
arrive as safetensors bytes, completions are scored by the ``score`` callback the trainer passes
(its reward functions over the decoded texts).

Usage::

    book = GroupBook(total=800, max_staleness=2, lease_s=60)
    manager = RolloutManager(book, info=..., prompt_ids=lambda g: ids[g], score=score_group)
    url = manager.start(host="0.0.0.0", port=0, advertise="10.0.0.5")   # http://10.0.0.5:41234
    manager.publish_weights(0, safetensors_bytes)
    ...
    manager.stop()

Rollout workers that go silent (no call for ``LOST_AFTER_BEATS`` heartbeats) are dropped and their
groups re-queued; so are leases past their deadline (a reaper thread checks every
``REAP_INTERVAL_S``).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Response
from fastapi.responses import JSONResponse, StreamingResponse

from relaytrain.netaddr import url_host
from relaytrain.rollout.protocol import (
    CHUNK_SHA256_HEADER,
    PREFIX,
    VERSION_HEADER,
    BatchAck,
    BatchItem,
    GroupLease,
    GroupResult,
    GroupResults,
    LeaseRequest,
    LeaseResponse,
    ManagerInfo,
    Registered,
    RegisterWorker,
    ReleaseGroup,
    ResultAck,
    WeightChunk,
    WeightsManifest,
    WorkerHeartbeat,
)
from relaytrain.rollout.queue import GroupBook, GroupRefused, ReadyGroup

log = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20
"""Weights are served in chunks of this size (the last one shorter)."""
SEND_SLICE_BYTES = 1 << 20
"""A chunk is handed to the HTTP server this much at a time."""
KEEP_VERSIONS = 2
"""Published versions held in memory: the latest and the one before (a pull in progress finishes)."""
HEARTBEAT_S = 2.0
LOST_AFTER_BEATS = 3
REAP_INTERVAL_S = 0.25

Score = Callable[..., tuple[list[float | None], dict[str, list[float | None]]]]
"""``score(group_id, token_ids per completion) -> (total rewards, per-function rewards)``; for a run that
plays episodes, with ``env_rewards=`` (the environment's reward of each episode) too."""


@dataclass
class Published:
    manifest: WeightsManifest
    data: bytes


class WeightStore:
    """The last ``KEEP_VERSIONS`` published weight files, chunked and hashed once."""

    def __init__(self, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.chunk_bytes = chunk_bytes
        self._versions: dict[int, Published] = {}
        self._lock = threading.Lock()

    def publish(self, version: int, data: bytes) -> WeightsManifest:
        view = memoryview(data)
        chunks = [
            WeightChunk(offset=o, length=len(view[o : o + self.chunk_bytes]),
                        sha256=hashlib.sha256(view[o : o + self.chunk_bytes]).hexdigest())
            for o in range(0, len(data), self.chunk_bytes)
        ]
        manifest = WeightsManifest(version=version, total_bytes=len(data), sha256=hashlib.sha256(view).hexdigest(),
                                   chunks=chunks)
        with self._lock:
            self._versions[version] = Published(manifest, data)
            for old in sorted(self._versions)[:-KEEP_VERSIONS]:
                del self._versions[old]
        return manifest

    @property
    def latest(self) -> int | None:
        with self._lock:
            return max(self._versions) if self._versions else None

    def manifest(self, version: int | None = None) -> WeightsManifest:
        with self._lock:
            if not self._versions:
                raise GroupRefused(409, "no weights published yet: wait and retry")
            chosen = max(self._versions) if version is None else version
            if chosen not in self._versions:
                raise GroupRefused(410, f"weights version {chosen} is no longer held (latest {max(self._versions)})")
            return self._versions[chosen].manifest

    def chunk(self, version: int, index: int) -> tuple[memoryview, WeightChunk]:
        with self._lock:
            published = self._versions.get(version)
        if published is None:
            raise GroupRefused(410, f"weights version {version} is no longer held (latest {self.latest})")
        chunks = published.manifest.chunks
        if not 0 <= index < len(chunks):
            raise GroupRefused(404, f"chunk {index}: version {version} has {len(chunks)} chunks")
        meta = chunks[index]
        return memoryview(published.data)[meta.offset : meta.offset + meta.length], meta


@dataclass
class WorkerRecord:
    worker_id: str
    threads: int
    labels: dict[str, str]
    last_seen: float
    version: int | None = None
    tokens_per_s: float = 0.0
    groups_done: int = 0
    tokens_done: int = 0
    registered_at: float = field(default=0.0)


class RolloutManager:
    """See the module docstring."""

    def __init__(self, book: GroupBook, *, info: ManagerInfo, prompt_ids: Callable[[int], list[int]],
                 score: Score, secret: str | None = None, clock: Callable[[], float] = time.monotonic,
                 training_version: Callable[[], int] | None = None,
                 task: Callable[[int], dict[str, Any]] | None = None) -> None:
        self.book = book
        self.task = task
        """A run that plays episodes: the reset arguments of group ``g``, handed out with its lease."""
        self.training_version = training_version
        """The version the trainer trains next (its step), which may be ahead of the latest published
        one: a result is judged stale against it, as the trainer will judge it when it takes it."""
        self.info = info
        self.prompt_ids = prompt_ids
        self.score = score
        self.secret = secret or secrets.token_urlsafe(24)
        self.clock = clock
        self.weights = WeightStore()
        self.workers: dict[str, WorkerRecord] = {}
        self.workers_seen = 0
        self.url: str | None = None
        self._lock = threading.Lock()
        self._server: Any = None
        self._threads: list[threading.Thread] = []
        self._halt = threading.Event()
        self.app = self._make_app()

    # -- the trainer's side -----------------------------------------------------------------

    def start(self, *, host: str = "0.0.0.0", port: int = 0, advertise: str = "127.0.0.1") -> str:
        """Serve on ``host:port`` (0: any free port) in a background thread; return the URL to announce."""
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        bound = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        serve = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="rollout-manager",
                                 daemon=True)
        reap = threading.Thread(target=self._reap_loop, name="rollout-reaper", daemon=True)
        self._threads = [serve, reap]
        for thread in self._threads:
            thread.start()
        self.url = f"http://{url_host(advertise)}:{bound}"
        deadline = time.monotonic() + 30
        while not self._server.started and serve.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            raise RuntimeError(f"the rollout manager did not start on {host}:{bound}")
        log.info("rollout manager at %s (listening on %s:%d)", self.url, host, bound)
        return self.url

    def stop(self) -> None:
        self._halt.set()
        if self._server is not None:
            self._server.should_exit = True
        for thread in self._threads:
            thread.join(timeout=10)

    def publish_weights(self, version: int, data: bytes) -> WeightsManifest:
        manifest = self.weights.publish(version, data)
        log.info("published weights v%d (%.1f MB, %d chunks)", version, len(data) / 1e6, len(manifest.chunks))
        return manifest

    @property
    def wants_weights(self) -> bool:
        """True while some rollout worker is attached (publishing is for them only)."""
        with self._lock:
            return bool(self.workers)

    def pool_view(self) -> list[dict[str, Any]]:
        """The attached workers, as ``api.models.RolloutWorkerView`` fields."""
        now = self.clock()
        with self._lock:
            records = list(self.workers.values())
        return [
            {"worker_id": r.worker_id, "version": r.version, "groups_in_flight": self.book.in_flight(r.worker_id),
             "tokens_per_s": round(r.tokens_per_s, 3), "groups_done": r.groups_done,
             "last_seen_s": round(max(0.0, now - r.last_seen), 3)}
            for r in records
        ]

    # -- liveness ---------------------------------------------------------------------------

    def _reap_loop(self) -> None:
        while not self._halt.wait(REAP_INTERVAL_S):
            self.reap()

    def reap(self) -> None:
        """Re-queue expired leases and the groups of workers gone silent."""
        now = self.clock()
        for group in self.book.expire(now):
            log.warning("group %d: lease expired, re-queued", group)
        limit = HEARTBEAT_S * LOST_AFTER_BEATS
        with self._lock:
            silent = [w for w, r in self.workers.items() if now - r.last_seen > limit]
            for worker_id in silent:
                del self.workers[worker_id]
        for worker_id in silent:
            groups = self.book.drop_worker(worker_id)
            log.warning("rollout worker %s silent for %.0f s: dropped, %d groups re-queued", worker_id, limit,
                        len(groups))

    def _seen(self, worker_id: str) -> WorkerRecord:
        with self._lock:
            record = self.workers.get(worker_id)
            if record is None:
                raise GroupRefused(404, f"rollout worker {worker_id!r} is not registered (register again)")
            record.last_seen = self.clock()
            return record

    # -- the HTTP API -----------------------------------------------------------------------

    def _make_app(self) -> FastAPI:
        app = FastAPI(title="relaytrain rollout manager", docs_url=None, redoc_url=None)

        def authorized(authorization: Annotated[str | None, Header()] = None) -> None:
            scheme, _, token = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), self.secret.encode()):
                raise HTTPException(401, "missing or wrong rollout secret (ask the commander for the run's manager)")

        @app.exception_handler(GroupRefused)
        async def refused(_request: Any, exc: GroupRefused) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)

        auth = [Depends(authorized)]
        self._worker_routes(app, auth)
        self._weight_routes(app, auth)
        self._group_routes(app, auth)
        return app

    def _worker_routes(self, app: FastAPI, auth: list[Any]) -> None:
        @app.get(f"{PREFIX}/info", dependencies=auth)
        def info() -> ManagerInfo:
            return self.info.model_copy(update={"version": self.weights.latest})

        @app.post(f"{PREFIX}/workers", dependencies=auth)
        def register(req: RegisterWorker) -> Registered:
            now = self.clock()
            with self._lock:
                self.workers[req.worker_id] = WorkerRecord(req.worker_id, req.threads, req.labels, now,
                                                           registered_at=now)
                self.workers_seen += 1
            self.book.drop_worker(req.worker_id)  # a worker that registers again holds nothing
            log.info("rollout worker %s registered (%d threads)", req.worker_id, req.threads)
            return Registered(worker_id=req.worker_id, heartbeat_s=HEARTBEAT_S, version=self.weights.latest)

        @app.post(f"{PREFIX}/workers/{{worker_id}}/heartbeat", dependencies=auth)
        def heartbeat(worker_id: str, req: WorkerHeartbeat) -> Registered:
            record = self._seen(worker_id)
            record.version, record.tokens_per_s = req.version, req.tokens_per_s
            return Registered(worker_id=worker_id, heartbeat_s=HEARTBEAT_S, version=self.weights.latest)

        @app.delete(f"{PREFIX}/workers/{{worker_id}}", dependencies=auth)
        def leave(worker_id: str) -> dict[str, Any]:
            with self._lock:
                known = self.workers.pop(worker_id, None)
            if known is None:
                raise GroupRefused(404, f"rollout worker {worker_id!r} is not registered")
            groups = self.book.drop_worker(worker_id)
            log.info("rollout worker %s left; %d groups re-queued", worker_id, len(groups))
            return {"worker_id": worker_id, "requeued": groups}

    def _weight_routes(self, app: FastAPI, auth: list[Any]) -> None:
        @app.get(f"{PREFIX}/weights", dependencies=auth)
        def manifest() -> WeightsManifest:
            return self.weights.manifest()

        @app.get(f"{PREFIX}/weights/{{version}}", dependencies=auth)
        def manifest_of(version: int) -> WeightsManifest:
            return self.weights.manifest(version)

        @app.get(f"{PREFIX}/weights/{{version}}/chunks/{{index}}", dependencies=auth)
        def chunk(version: int, index: int) -> Response:
            view, meta = self.weights.chunk(version, index)
            return StreamingResponse(_slices(view), media_type="application/octet-stream",
                                     headers={CHUNK_SHA256_HEADER: meta.sha256, VERSION_HEADER: str(version),
                                              "Content-Length": str(len(view))})

    def _group_routes(self, app: FastAPI, auth: list[Any]) -> None:
        @app.post(f"{PREFIX}/groups/lease", dependencies=auth)
        def lease(req: LeaseRequest) -> LeaseResponse:
            record = self._seen(req.worker_id)
            record.version = req.version
            latest = self.weights.latest
            if latest is None:
                raise GroupRefused(409, "no weights published yet: wait and pull")
            taken = self.book.lease(req.worker_id, req.max_groups, version=req.version, latest=latest,
                                    now=self.clock())
            groups = [GroupLease(group_id=g, attempt=a, prompt_ids=self.prompt_ids(g), deadline_s=self.book.lease_s,
                                 task=self.task(g) if self.task is not None else None)
                      for g, a in taken]
            return LeaseResponse(groups=groups, latest_version=latest, finished=not groups and self.book.finished)

        @app.post(f"{PREFIX}/groups/{{group_id}}/result", dependencies=auth)
        def result(group_id: int, req: GroupResult) -> ResultAck:
            self._take_result(group_id, req)
            return ResultAck(group_id=group_id, accepted=True)

        @app.post(f"{PREFIX}/groups/results", dependencies=auth)
        def results(req: GroupResults) -> BatchAck:
            items = []
            for group_id, one in req.results:
                try:
                    self._take_result(group_id, one)
                    items.append(BatchItem(group_id=group_id, accepted=True))
                except GroupRefused as exc:
                    items.append(BatchItem(group_id=group_id, accepted=False, status=exc.status, detail=str(exc)))
            return BatchAck(items=items)

        @app.post(f"{PREFIX}/groups/{{group_id}}/release", dependencies=auth)
        def release(group_id: int, req: ReleaseGroup) -> ResultAck:
            self._seen(req.worker_id)
            self.book.release(group_id, req.worker_id, req.attempt)
            return ResultAck(group_id=group_id, accepted=False)

    def _take_result(self, group_id: int, req: GroupResult) -> None:
        """Validate, check the lease, score and accept one result; ``GroupRefused`` says why not."""
        record = self._seen(req.worker_id)
        self._validate(group_id, req)
        self.book.check_result(group_id, req.worker_id, req.attempt, version=req.version, latest=self._judged_against())
        token_ids = [c.token_ids for c in req.completions]
        if self.info.plays_episodes:
            rewards, per_function = self.score(group_id, token_ids, env_rewards=[c.env_reward for c in req.completions])
            masks: list[list[int]] | None = [list(c.action_mask or []) for c in req.completions]
        else:
            rewards, per_function = self.score(group_id, token_ids)
            masks = None
        group = ReadyGroup(group_id=group_id, version=req.version, source=req.worker_id, token_ids=token_ids,
                           logps=[c.logps for c in req.completions], finished=[c.finished for c in req.completions],
                           rewards=rewards, per_function=per_function, action_mask=masks)
        self.book.accept(group, req.worker_id, req.attempt)
        record.groups_done += 1
        record.tokens_done += group.tokens

    def _judged_against(self) -> int | None:
        latest = self.weights.latest
        if self.training_version is None or latest is None:
            return latest
        return max(latest, self.training_version())

    def _validate(self, group_id: int, req: GroupResult) -> None:
        """422 naming the first thing wrong with a result's completions (nothing is changed)."""
        sampling = self.info.sampling
        if len(req.completions) != sampling.num_generations:
            raise GroupRefused(422, f"completions: {len(req.completions)} for group {group_id}, expected "
                                    f"num_generations={sampling.num_generations}")
        if self.info.plays_episodes:
            self._validate_episodes(req)
            return
        for i, c in enumerate(req.completions):
            where = f"completions[{i}]"
            if c.action_mask is not None or c.env_reward is not None:
                raise GroupRefused(422, f"{where}: action_mask and env_reward are for runs that play episodes")
            if len(c.token_ids) > sampling.max_new_tokens:
                raise GroupRefused(422, f"{where}.token_ids: {len(c.token_ids)} tokens, more than "
                                        f"max_new_tokens={sampling.max_new_tokens}")
            if len(c.logps) != len(c.token_ids):
                raise GroupRefused(422, f"{where}.logps: {len(c.logps)} values for {len(c.token_ids)} tokens")
            bad = next((t for t in c.token_ids if not 0 <= t < sampling.vocab_size), None)
            if bad is not None:
                raise GroupRefused(422, f"{where}.token_ids: {bad} is not a token id (vocabulary of "
                                        f"{sampling.vocab_size})")
            eos = [k for k, t in enumerate(c.token_ids) if t == sampling.eos_token_id]
            if c.finished and eos != [len(c.token_ids) - 1]:
                raise GroupRefused(422, f"{where}: finished, so it must end with its only EOS token "
                                        f"({sampling.eos_token_id})")
            if not c.finished and (eos or len(c.token_ids) != sampling.max_new_tokens):
                raise GroupRefused(422, f"{where}: not finished, so it must hold max_new_tokens="
                                        f"{sampling.max_new_tokens} tokens and no EOS")


    def _validate_episodes(self, req: GroupResult) -> None:
        """As ``_validate``, for episodes: an action mask as long as the tokens, some policy token, logps
        0 on the environment's tokens."""
        vocab = self.info.sampling.vocab_size
        for i, c in enumerate(req.completions):
            where = f"completions[{i}]"
            if c.action_mask is None or len(c.action_mask) != len(c.token_ids):
                raise GroupRefused(422, f"{where}.action_mask: required for an episode, one 0/1 per token "
                                        f"({len(c.token_ids)})")
            if len(c.logps) != len(c.token_ids):
                raise GroupRefused(422, f"{where}.logps: {len(c.logps)} values for {len(c.token_ids)} tokens")
            bad = next((t for t in c.token_ids if not 0 <= t < vocab), None)
            if bad is not None:
                raise GroupRefused(422, f"{where}.token_ids: {bad} is not a token id (vocabulary of {vocab})")
            if any(m == 0 and lp != 0 for m, lp in zip(c.action_mask, c.logps, strict=True)):
                raise GroupRefused(422, f"{where}.logps: the environment's tokens carry no log-probability (0)")


async def _slices(view: memoryview) -> AsyncIterator[memoryview]:
    """A chunk's bytes in ``SEND_SLICE_BYTES`` views of the published file: the server copies a slice
    at a time while it is in cache (h11 joins what it sends), never the whole chunk twice over."""
    for start in range(0, len(view), SEND_SLICE_BYTES):
        yield view[start : start + SEND_SLICE_BYTES]
