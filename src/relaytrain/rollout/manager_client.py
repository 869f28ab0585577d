"""A rollout worker's HTTP client of one rollout manager (the API of :mod:`relaytrain.rollout.protocol`),
and the parallel, verified weight pull. Torch-free.

Errors name what the worker should do next:

- ``ManagerGone``: unreachable, 401 (the secret changed) or 404 for this worker — ask the
  commander again where the run's manager is now;
- ``Refused``: 409 (late, stale, already accepted, wrong version) — drop the work, carry on;
- ``NoWeightsYet``: 409 on the manifest, nothing published yet — wait and ask again (``pull_weights``
  does, up to ``wait_s``);
- ``WeightsGone``: 410, the version is no longer held — start over with the latest;
- ``ManagerShuttingDown``: 503 — the manager is going away; ask the commander again, later;
- ``WeightsCorrupt``: a chunk kept failing its sha256.

A pull verifies every byte before handing it back: the manifest's chunks must tile the file
exactly, and each chunk is hashed by the stream that reads it, a slice at a time as the slices
arrive (the bytes are still in cache; hashlib releases the GIL, so the streams hash on every
core). The manifest's whole-file sha256 is not checked again: the chunks already cover every byte.

Usage::

    manager = ManagerClient(endpoint.url, endpoint.secret)
    info = manager.info()
    pulled = manager.pull_weights(streams=4)          # PulledWeights(version, data, seconds)
    newer = manager.pull_weights(into=spare)          # into a buffer no longer in use (same size: reused)
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from relaytrain.errors import RelayError
from relaytrain.rollout.protocol import (
    PREFIX,
    BatchAck,
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

log = logging.getLogger(__name__)

PROGRESS_BYTES = 256 * 2**20
"""A weight pull logs its progress every this many bytes (only pulls bigger than that log)."""
READ_SLICE_BYTES = 1 << 20
"""A stream reads a chunk this much at a time and hashes each slice as it lands (still in cache)."""
STREAMS = 4
"""Parallel connections of a weight pull, unless told otherwise."""
NO_WEIGHTS_POLL_S = 0.2
"""How often ``pull_weights`` asks again while the manager has published nothing."""


class ManagerError(RelayError):
    """The rollout manager refused a request."""


class ManagerGone(ManagerError):
    """The rollout manager is unreachable or no longer knows this worker; ask the commander where it is."""


class ManagerShuttingDown(ManagerGone):
    """The rollout manager is shutting down."""


class Refused(ManagerError):
    """The rollout manager refused the work (late, stale, already accepted or the wrong version)."""


class NoWeightsYet(Refused):
    """The rollout manager has published no weights yet; wait and ask again."""


class WeightsGone(ManagerError):
    """This weights version is no longer held by the manager; pull the latest."""


class WeightsCorrupt(ManagerError):
    """The weights kept failing their sha256."""


@dataclass(frozen=True)
class PulledWeights:
    """One verified weight version: the safetensors file's bytes."""

    version: int
    data: bytearray
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return len(self.data) / 2**20 / max(self.seconds, 1e-9)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    return f"{detail if detail is not None else response.text[:300]} (HTTP {response.status_code})"


def _raise_for(response: httpx.Response, what: str) -> None:
    if response.is_success:
        return
    status, detail = response.status_code, f"{what}: {_detail(response)}"
    if status in (401, 404):
        raise ManagerGone(detail)
    if status == 409:
        raise Refused(detail)
    if status == 410:
        raise WeightsGone(detail)
    if status == 503:
        raise ManagerShuttingDown(detail)
    raise ManagerError(detail)


class ManagerClient:
    """Talks to one rollout manager at ``url`` with ``secret``. Thread-safe."""

    def __init__(self, url: str, secret: str, *, timeout_s: float = 30.0, chunk_retries: int = 3) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.chunk_retries = chunk_retries
        self._headers = {"Authorization": f"Bearer {secret}"}
        self._http = self._new_http()

    def _new_http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url + PREFIX, headers=self._headers, timeout=self.timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ManagerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, what: str, body: Any = None, http: httpx.Client | None = None) -> Any:
        try:
            response = (http or self._http).request(method, path, json=body)
        except httpx.TransportError as exc:
            raise ManagerGone(f"{what}: cannot reach the rollout manager at {self.url}: {exc}") from exc
        _raise_for(response, what)
        return response

    # -- the session ---------------------------------------------------------------------------

    def info(self) -> ManagerInfo:
        return ManagerInfo.model_validate(self._call("GET", "/info", "info").json())

    def register(self, req: RegisterWorker) -> Registered:
        return Registered.model_validate(self._call("POST", "/workers", "register", req.model_dump()).json())

    def heartbeat(self, worker_id: str, req: WorkerHeartbeat) -> Registered:
        path = f"/workers/{worker_id}/heartbeat"
        return Registered.model_validate(self._call("POST", path, "heartbeat", req.model_dump()).json())

    def unregister(self, worker_id: str) -> None:
        self._call("DELETE", f"/workers/{worker_id}", "unregister")

    def lease(self, req: LeaseRequest) -> LeaseResponse:
        return LeaseResponse.model_validate(self._call("POST", "/groups/lease", "lease", req.model_dump()).json())

    def post_result(self, group_id: int, result: GroupResult) -> ResultAck:
        response = self._call("POST", f"/groups/{group_id}/result", f"result of group {group_id}", result.model_dump())
        return ResultAck.model_validate(response.json())

    def post_results(self, results: list[tuple[int, GroupResult]]) -> BatchAck:
        """A batch's results in one round trip; each item says whether it was taken, and if not, why."""
        body = GroupResults(results=results).model_dump()
        return BatchAck.model_validate(self._call("POST", "/groups/results", f"results of {len(results)} groups",
                                                  body).json())

    def release(self, group_id: int, req: ReleaseGroup) -> ResultAck:
        response = self._call("POST", f"/groups/{group_id}/release", f"release of group {group_id}", req.model_dump())
        return ResultAck.model_validate(response.json())

    # -- weights -------------------------------------------------------------------------------

    def manifest(self) -> WeightsManifest:
        """The latest version's manifest; ``NoWeightsYet`` before the first is published."""
        try:
            response = self._call("GET", "/weights", "weights manifest")
        except Refused as exc:  # the one 409 of this path
            raise NoWeightsYet(str(exc)) from exc
        return WeightsManifest.model_validate(response.json())

    def pull_weights(self, *, streams: int = STREAMS, attempts: int = 3, into: bytearray | None = None,
                     wait_s: float | None = None) -> PulledWeights:
        """The latest version, downloaded in chunks over ``streams`` parallel connections, every chunk
        checked against the manifest's sha256. Before the first version is published it asks again
        every ``NO_WEIGHTS_POLL_S`` for ``wait_s`` seconds (default: the client's timeout), then raises
        ``NoWeightsYet``. A version dropped mid-pull (410) starts over with the latest, ``attempts``
        times at most. ``into``: see ``pull_version``."""
        deadline = time.monotonic() + (self.timeout_s if wait_s is None else wait_s)
        for attempt in range(attempts):
            manifest = self._manifest_when_published(deadline)
            try:
                return self.pull_version(manifest, streams=streams, into=into)
            except WeightsGone as exc:
                log.info("weights v%d dropped mid-pull (%s); pulling the latest (%d/%d)",
                         manifest.version, exc, attempt + 1, attempts)
        raise WeightsGone(f"the manager replaced its weights {attempts} times during the pull")

    def _manifest_when_published(self, deadline: float) -> WeightsManifest:
        while True:
            try:
                return self.manifest()
            except NoWeightsYet:
                if time.monotonic() + NO_WEIGHTS_POLL_S > deadline:
                    raise
            time.sleep(NO_WEIGHTS_POLL_S)

    def pull_version(self, manifest: WeightsManifest, *, streams: int = STREAMS,
                     into: bytearray | None = None) -> PulledWeights:
        """Download and verify the file ``manifest`` describes. ``into``: a buffer nobody uses any
        more (the previous pull's, once the engine no longer holds views of it); reused when it has
        the file's size (a fresh buffer costs its page faults: ~0.5 s on 500 MB), overwritten either
        way only from the start of the pull. The buffer is handed back only once every chunk is
        verified; after a failure its content is undefined."""
        _check_manifest(manifest)
        started = time.monotonic()
        buffer = into if into is not None and len(into) == manifest.total_bytes else bytearray(manifest.total_bytes)
        view = memoryview(buffer)
        progress = _Progress(manifest)
        connections: list[http.client.HTTPConnection] = []
        lock, local = threading.Lock(), threading.local()

        def connection() -> http.client.HTTPConnection:  # one connection per stream (pool thread)
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = self._new_connection()
                with lock:
                    connections.append(conn)
            return conn

        def fetch(index: int) -> None:
            chunk = manifest.chunks[index]
            out = view[chunk.offset : chunk.offset + chunk.length]
            self._fetch_chunk(connection, manifest.version, index, chunk, out)
            progress.add(chunk.length)

        try:
            with ThreadPoolExecutor(max(1, min(streams, len(manifest.chunks))), "weights") as pool:
                futures = [pool.submit(fetch, i) for i in range(len(manifest.chunks))]
                for future in futures:
                    future.result()
        finally:
            for conn in connections:
                conn.close()
        return PulledWeights(manifest.version, buffer, time.monotonic() - started)

    def _new_connection(self) -> http.client.HTTPConnection:
        parts = urllib.parse.urlsplit(self.url)
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        return kind(parts.hostname or "127.0.0.1", parts.port, timeout=self.timeout_s)

    def _fetch_chunk(self, connection: Callable[[], http.client.HTTPConnection], version: int, index: int,
                     chunk: WeightChunk, out: memoryview) -> None:
        """Chunk ``index`` read straight into ``out`` (http.client's ``readinto``: no copy; httpx hands
        back a new ``bytes`` per read, 4× slower on loopback) and hashed as it lands, verified, retried."""
        what = f"weights v{version} chunk {index}"
        path = urllib.parse.urlsplit(self.url).path + f"{PREFIX}/weights/{version}/chunks/{index}"
        problem = ""
        for attempt in range(self.chunk_retries + 1):
            if attempt:
                log.warning("%s: %s; retrying (%d/%d)", what, problem, attempt, self.chunk_retries)
            conn = connection()
            try:
                conn.request("GET", path, headers=self._headers)
                response = conn.getresponse()
                if response.status != 200:
                    _raise_for(httpx.Response(response.status, content=response.read()), what)
                got, digest = _read_into(response, out)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()  # reconnects at the next request
                if attempt == self.chunk_retries and isinstance(exc, ConnectionRefusedError):
                    raise ManagerGone(f"{what}: cannot reach the rollout manager at {self.url}: {exc}") from exc
                problem = f"transfer failed ({exc})"
                continue
            if got != chunk.length:
                problem = f"{got} bytes, expected {chunk.length}"
                continue
            if digest == chunk.sha256:
                return
            problem = f"sha256 {digest[:12]}…, expected {chunk.sha256[:12]}…"
        raise WeightsCorrupt(f"{what}: {problem} after {self.chunk_retries + 1} tries")


def _read_into(response: http.client.HTTPResponse, out: memoryview) -> tuple[int, str]:
    """Read the body into ``out``, hashing each ``READ_SLICE_BYTES`` as it lands; the bytes read (more
    than fit: ``len(out) + 1``, the rest drained) and the sha256 of those in ``out``."""
    hasher = hashlib.sha256()
    got = hashed = 0
    while got < len(out):
        n = response.readinto(out[got : got + READ_SLICE_BYTES])
        if n == 0:
            break
        got += n
        if got - hashed >= READ_SLICE_BYTES or got == len(out):
            hasher.update(out[hashed:got])
            hashed = got
    hasher.update(out[hashed:got])
    if got == len(out) and response.read(1):
        response.read()
        got += 1
    return got, hasher.hexdigest()


def _check_manifest(manifest: WeightsManifest) -> None:
    """The chunks tile the file exactly, in order."""
    offset = 0
    for i, chunk in enumerate(manifest.chunks):
        if chunk.offset != offset or chunk.length < 0:
            raise ManagerError(f"weights v{manifest.version}: chunks[{i}] starts at {chunk.offset}, expected {offset}")
        offset += chunk.length
    if offset != manifest.total_bytes:
        raise ManagerError(f"weights v{manifest.version}: chunks cover {offset} bytes, total_bytes is "
                           f"{manifest.total_bytes}")


class _Progress:
    """Logs a big pull's progress every ``PROGRESS_BYTES``."""

    def __init__(self, manifest: WeightsManifest) -> None:
        self.manifest = manifest
        self.done = 0
        self.next_log = PROGRESS_BYTES
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self.done += count
            if self.done < self.next_log or self.done >= self.manifest.total_bytes:
                return
            self.next_log += PROGRESS_BYTES
            done, total = self.done / 2**20, self.manifest.total_bytes / 2**20
        rate = done / max(time.monotonic() - self.started, 1e-9)
        log.info("pulling weights v%d: %.0f/%.0f MiB (%.0f MiB/s)", self.manifest.version, done, total, rate)
