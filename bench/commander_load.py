"""Commander load benchmark: lease renewals and claims through the real HTTP API.

    python -m bench.commander_load                        # SQLite and PostgreSQL, 1,000 and 5,000 workers
    python -m bench.commander_load --db sqlite --workers 1000 --duration 5
    python -m bench.commander_load --quiet-wait 60        # on a shared machine: wait for quiet windows
    python -m bench.commander_load --server relay         # the plain `relay serve` (ceiling: /api/v1/health)

Server. A subprocess on 127.0.0.1, stopped by its PID. By default it is
``python -m bench.commander_load serve``, which does what ``relay serve`` does (``Store(db)``,
``store.upgrade()``, ``create_app(store, admin_token=…, sweep_interval_s=5)``,
``uvicorn.run(app, host="127.0.0.1", port=…, log_level="warning", access_log=False)``: one
process, uvloop + httptools) and adds ``GET /bench/noop``: an ``async`` handler returning
``{}``, no auth, no database, behind the app's own middleware. That route is the ceiling: what
the same client gets from the same server when the handler does nothing. ``--server relay``
starts the real ``relay serve`` instead and uses ``GET /api/v1/health`` (a database ping) as
the ceiling. ``--app-factory module:function`` builds the app with another factory
``(db, token, sweep_interval_s) -> app`` to measure a candidate change before and after.

Databases. Fresh for every part: a SQLite file in a temporary folder, or a new PostgreSQL
database on ``--pg-url`` (dropped ``WITH (FORCE)`` afterwards).

Client. One asyncio loop in this process. ``--concurrency`` lanes (default 32), one request in
flight each; a lane is an ``httpx.AsyncClient`` with a pool of one keep-alive connection
(``--shared-pool``: one AsyncClient whose pool holds all of them, which costs about twice the
client CPU per request in httpx 0.28). Latency is client-side, from send to full response
(``time.perf_counter``); rates count the 200s completed in a window of ``--duration`` s after
``--warmup`` s.

Renewals, per database and worker count N. Set up through the API, pipelined per worker:
submit run r{i} (admin token), register worker w{i} and claim with ``wait_s=0`` (worker
token). Runs carry ``lease.ttl_s = 3600`` so no lease expires whatever the pacing (the renew
path does not depend on the ttl). Worker counts are set up cumulatively (the 5,000 include
the first 1,000). Then:

* max: closed loop, every lane renews the N leases round-robin as fast as answers come, so
  the offered load always exceeds what the server takes: the achieved rate is the sustained
  maximum. Each worker then renews every N/rate s, i.e. at ttl/3 for ttl = 3N/rate ("ttl at
  max": the shortest ttl N workers can use on this server);
* ceiling: the same closed loop on the no-op. The ceiling and "max" alternate in
  ``--slices`` (5) slices of duration/slices seconds, so that load from other processes
  weighs on both alike and "max / ceiling" stays meaningful on a shared machine;
* paced: open loop at ``--rate`` (2,000/s): renewal k is due at t0 + k/rate and goes to
  worker k mod N, so each worker renews every N/rate s (ttl/3 for ttl = 3N/rate). When no lane
  is free the send waits; "send lag" is how late it left against its due time. The target
  (>= 2,000/s with p99 <= 50 ms) is judged here.

Every non-200 is counted (a 409 would be a lost lease). "in-app ms" is the server's own mean
time per renew from its ``/metrics`` histogram (middleware to response, including waits for
a thread and the SQLite write lock). "Store.renew_lease alone" calls the store directly in
this process, one thread, no HTTP, for ``--store-seconds``.

Claims, per database. ``--queue`` runs (10,000) are queued before the server starts: the
first through ``Store.submit_run``, the rest as copies of its ``runs`` and ``events`` rows (new
run_id and config.run_id, created_at 1 us apart) in one transaction: what ``submit_run``
writes, faster. On PostgreSQL the ``runs`` table is then analyzed, as autovacuum would do
within a minute (without statistics each claim sorts the whole queue: about 7 ms at 10,000
runs). Then ``--claimers`` (32) asyncio claimers, each a registered worker on its own
lane, claim with ``wait_s=0`` in a loop until every run is granted or ``--claim-seconds``
(20) have passed. An empty answer before every run is granted is counted ("empty answers")
and retried after 5 ms: on PostgreSQL a claim skips the run a concurrent claim holds (``FOR
UPDATE SKIP LOCKED``, one candidate at a time), so at the very end of a queue up to
claimers - 1 claims can find the last runs all held by others.
Double grants: a (run_id, epoch) answered to two claimers, a run granted twice, an epoch
other than 1, or, read from the database after the server stops, a run with more than one
attempt (and the database must hold exactly the runs the API granted).

CPU. Over each window, from /proc: the server process (all threads), this client process,
every ``postgres`` process on the machine, and the rest of the machine ("other"; over
0.25 cores marks the row as disturbed). A process that exits within the window takes its
CPU time along, so it lands in "other": PostgreSQL backends of connections that the
commander's pool opens and closes do (the ceiling slices, interleaved, tell that apart from
other load). On a 2-core machine the server and the client share the cores, so the CPU
columns and the per-request CPU show which side saturates.

Only 127.0.0.1 (and the PostgreSQL server given) is contacted. The server is stopped, the
databases dropped and the temporary files removed on every exit path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

NOOP_PATH = "/bench/noop"
PG_URL = os.environ.get(
    "RELAY_BENCH_PG_URL", os.environ.get("RELAY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
)
LEASE_TTL_S = 3600.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------
# the server side (runs in the subprocess)


def add_noop(app: Any) -> None:
    """Add ``GET /bench/noop``: no auth, no database, returns ``{}``."""

    @app.get(NOOP_PATH, include_in_schema=False)
    async def noop() -> dict:
        return {}


def make_app(db: str | None = None, token: str | None = None, sweep_interval_s: float = 5.0) -> Any:
    """The commander app as ``relay serve`` builds it, plus ``GET /bench/noop``.

    Usable as a uvicorn factory (``uvicorn --factory bench.commander_load:make_app``); the
    database and token then come from ``RELAY_DB`` and ``RELAY_TOKEN``.
    """
    from relaytrain.commander.app import create_app
    from relaytrain.commander.store import Store

    store = Store(db or os.environ["RELAY_DB"])
    store.upgrade()
    token = token if token is not None else (os.environ.get("RELAY_TOKEN") or None)
    app = create_app(store, admin_token=token, sweep_interval_s=sweep_interval_s)
    add_noop(app)
    return app


def serve(argv: list[str]) -> None:
    """``python -m bench.commander_load serve --db … --port …``: ``relay serve`` + the no-op route."""
    import logging

    import uvicorn

    p = argparse.ArgumentParser(prog="bench.commander_load serve")
    p.add_argument("--db", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sweep-interval", type=float, default=5.0)
    p.add_argument("--log-level", default="warning")
    p.add_argument("--app-factory", default="bench.commander_load:make_app")
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module, _, name = a.app_factory.partition(":")
    factory = getattr(importlib.import_module(module), name)
    app = factory(a.db, os.environ.get("RELAY_TOKEN") or None, a.sweep_interval)
    # the same call as relaytrain.cli.serve
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level=a.log_level.lower(), access_log=False)


# ------------------------------------------------------------------------------------------
# processes, databases, CPU accounting


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_available(url: str) -> str | None:
    """None if the server answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(url.replace("+psycopg", ""), connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means "skip PostgreSQL"
        return f"{type(exc).__name__}: {exc}".strip()


def create_pg_database(base: str) -> str:
    import psycopg

    name = f"relay_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return base.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(base: str, url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(base.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def fresh_database(kind: str, tmp: Path, pg_base: str) -> Iterator[str]:
    if kind == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="db-", dir=tmp))
        try:
            yield f"sqlite:///{folder / 'relay.db'}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    else:
        url = create_pg_database(pg_base)
        try:
            yield url
        finally:
            drop_pg_database(pg_base, url)


@dataclass
class Server:
    db: str
    token: str
    tmp: Path
    mode: str = "bench"  # bench: relay serve + /bench/noop; relay: the real `relay serve`
    factory: str = "bench.commander_load:make_app"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ceiling_path(self) -> str:
        return NOOP_PATH if self.mode == "bench" else "/api/v1/health"

    def start(self) -> Server:
        self.log = self.tmp / f"server-{self.port}.log"
        if self.mode == "bench":
            cmd = [sys.executable, "-m", "bench.commander_load", "serve", "--db", self.db, "--port", str(self.port),
                   "--log-level", "warning", "--app-factory", self.factory]
        else:
            cmd = [sys.executable, "-m", "relaytrain.cli", "serve", "--db", self.db, "--port", str(self.port),
                   "--log-level", "warning"]
        env = {**os.environ, "RELAY_TOKEN": self.token}
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else root
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
                                         start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not answer in 60 s: {self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:] if self.log else ""
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return float("nan")


def postgres_cpu_s() -> float:
    """CPU seconds of every process named ``postgres`` on this machine (the database server, when
    it runs here), from /proc; read only, to tell the database's share from other load."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.find("(") + 1:text.rfind(")")]
        if name.startswith("postgres"):
            fields = text.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies over all CPUs, from /proc/stat."""
    try:
        parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan"), float("nan")
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return total - idle, total


@dataclass
class CpuSample:
    wall: float
    server: float
    client: float
    db: float
    busy: float
    total: float

    @classmethod
    def take(cls, server_pid: int) -> CpuSample:
        t = os.times()
        busy, total = machine_cpu()
        return cls(time.perf_counter(), proc_cpu_s(server_pid), t.user + t.system, postgres_cpu_s(), busy, total)

    def until(self, later: CpuSample) -> dict[str, float]:
        wall = later.wall - self.wall
        dt = later.total - self.total
        d = {
            "server_cpu": (later.server - self.server) / wall,
            "client_cpu": (later.client - self.client) / wall,
            "machine_cpu": (later.busy - self.busy) / dt * (os.cpu_count() or 1) if dt else float("nan"),
        }
        d["db_cpu"] = max(0.0, (later.db - self.db) / wall)  # a backend that exits takes its CPU along
        d["other_cpu"] = d["machine_cpu"] - d["server_cpu"] - d["client_cpu"] - d["db_cpu"]
        return d


# ------------------------------------------------------------------------------------------
# load generation


def pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


@dataclass
class Window:
    """Completions inside [start, end): latencies of the 200s, counts of everything else."""

    warmup: float
    duration: float
    start: float = 0.0
    end: float = 0.0
    lat: list[float] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)
    other: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    cpu: dict[str, float] = field(default_factory=dict)

    def begin(self) -> None:
        now = time.perf_counter()
        self.start = now + self.warmup
        self.end = self.start + self.duration

    def record(self, t_send: float, t_done: float, status: int | str, lag: float | None = None) -> None:
        if not (self.start <= t_done < self.end):
            return
        if status == 200:
            self.lat.append(t_done - t_send)
            if lag is not None:
                self.lag.append(lag)
        else:
            self.other[str(status)] = self.other.get(str(status), 0) + 1

    @classmethod
    def merged(cls, parts: list[Window]) -> Window:
        """The windows of several slices as one (CPU shares weighted by duration)."""
        total = sum(w.duration for w in parts)
        out = cls(0.0, total)
        for w in parts:
            out.lat += w.lat
            out.lag += w.lag
            for k, v in w.other.items():
                out.other[k] = out.other.get(k, 0) + v
        keys = set().union(*(w.cpu.keys() for w in parts))
        out.cpu = {k: sum(w.cpu.get(k, NAN) * w.duration for w in parts) / total for k in keys}
        return out

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.lat)
        lag = sorted(self.lag)
        out = {
            "rate": len(lat) / self.duration,
            "ok": len(lat),
            "p50_ms": pct(lat, 0.50) * 1e3,
            "p99_ms": pct(lat, 0.99) * 1e3,
            "max_ms": (lat[-1] * 1e3) if lat else float("nan"),
            "errors": dict(self.other),
            **self.cpu,
        }
        if lag:
            out["lag_p99_ms"] = pct(lag, 0.99) * 1e3
        answered = len(lat) + sum(self.other.values())
        for who in ("server", "client"):
            if f"{who}_cpu" in self.cpu and answered:
                out[f"{who}_us"] = self.cpu[f"{who}_cpu"] * self.duration / answered * 1e6
        return out


async def wait_quiet(server_pid: int, limit_s: float) -> float:
    """Wait up to ``limit_s`` until processes other than ours and PostgreSQL use under
    ``DISTURBED`` cores over one second; returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        first = CpuSample.take(server_pid)
        await asyncio.sleep(1.0)
        if first.until(CpuSample.take(server_pid))["other_cpu"] < DISTURBED:
            break
    waited = time.perf_counter() - t0
    if waited > 1.5:
        say(f"    (waited {waited:.0f} s for other processes to quieten)")
    return waited


async def _cpu_probe(win: Window, server_pid: int) -> None:
    await asyncio.sleep(max(0.0, win.start - time.perf_counter()))
    first = CpuSample.take(server_pid)
    await asyncio.sleep(max(0.0, win.end - time.perf_counter()))
    win.cpu = first.until(CpuSample.take(server_pid))


async def send(client: httpx.AsyncClient, method: str, url: str, body: bytes | None) -> int | str:
    try:
        r = await client.request(method, url, content=body)
        await r.aread()
        return r.status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


async def _closed(lanes: list[httpx.AsyncClient], requests: list[tuple[str, str, bytes | None]],
                  counter: Iterator[int], warmup: float, duration: float, server_pid: int) -> Window:
    """One sender per lane, each sending its next request when the previous one answered."""
    win = Window(warmup, duration)
    win.begin()
    n = len(requests)

    async def sender(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < win.end:
            method, url, body = requests[next(counter) % n]
            t = time.perf_counter()
            status = await send(client, method, url, body)
            win.record(t, time.perf_counter(), status)

    probe = asyncio.create_task(_cpu_probe(win, server_pid))
    await asyncio.wait_for(asyncio.gather(*(sender(c) for c in lanes)), warmup + duration + 60)
    await probe
    return win


async def closed_loops(lanes: list[httpx.AsyncClient], phases: dict[str, list[tuple[str, str, bytes | None]]], *,
                       warmup: float, duration: float, slices: int, server_pid: int,
                       quiet_s: float = 0.0) -> dict[str, dict[str, Any]]:
    """Closed loops over several request sets, interleaved in ``slices`` rounds of duration/slices
    seconds each (after ``warmup`` once, then 0.25 s before each slice), so that load from other
    processes on the machine weighs on all of them alike and their ratio stays meaningful."""
    await wait_quiet(server_pid, quiet_s)
    counters = {name: itertools.count() for name in phases}
    parts: dict[str, list[Window]] = {name: [] for name in phases}
    for i in range(slices):
        for name, reqs in phases.items():
            parts[name].append(await _closed(lanes, reqs, counters[name], warmup if i == 0 else 0.25,
                                             duration / slices, server_pid))
    return {name: Window.merged(ws).summary() for name, ws in parts.items()}


async def paced_loop(lanes: list[httpx.AsyncClient], requests: list[tuple[str, str, bytes | None]], *,
                     rate: float, warmup: float, duration: float, server_pid: int,
                     quiet_s: float = 0.0) -> dict[str, Any]:
    """Open loop: request k is due at t0 + k/rate and waits for an idle lane (bounded in flight)."""
    await wait_quiet(server_pid, quiet_s)
    win = Window(warmup, duration)
    win.begin()
    t0 = time.perf_counter()
    idle: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
    for c in lanes:
        idle.put_nowait(c)
    running: set[asyncio.Task] = set()
    n = len(requests)

    async def one(k: int, due: float, client: httpx.AsyncClient) -> None:
        try:
            method, url, body = requests[k % n]
            t = time.perf_counter()
            status = await send(client, method, url, body)
            win.record(t, time.perf_counter(), status, lag=t - due)
        finally:
            idle.put_nowait(client)

    probe = asyncio.create_task(_cpu_probe(win, server_pid))
    k = 0
    while True:
        due = t0 + k / rate
        now = time.perf_counter()
        if due >= win.end or now >= win.end:
            break
        if due > now + 0.0005:
            await asyncio.sleep(due - now)
        client = await idle.get()
        task = asyncio.create_task(one(k, due, client))
        running.add(task)
        task.add_done_callback(running.discard)
        k += 1
    if running:
        await asyncio.wait(running, timeout=60)
    await probe
    out = win.summary()
    out["offered"] = rate
    return out


async def bounded_map(fn: Callable[[Any], Awaitable[Any]], items: list[Any], concurrency: int) -> list[Any]:
    """``fn`` over ``items`` with at most ``concurrency`` running; results in order."""
    results: list[Any] = [None] * len(items)
    it = iter(enumerate(items))

    async def worker() -> None:
        for i, item in it:
            results[i] = await fn(item)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def make_client(base_url: str, token: str, concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60,
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


@contextlib.asynccontextmanager
async def make_lanes(base_url: str, token: str, concurrency: int, shared: bool):
    """``concurrency`` lanes, one request in flight each: by default one AsyncClient with a
    pool of one connection per lane; with ``shared`` one AsyncClient whose pool holds them all."""
    if shared:
        async with make_client(base_url, token, concurrency) as client:
            yield [client] * concurrency
        return
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(make_client(base_url, token, 1)) for _ in range(concurrency)]


def run_doc(run_id: str) -> dict[str, Any]:
    return {"run_id": run_id, "kind": "command", "max_steps": 1000, "trainer": {"command": "true"},
            "lease": {"ttl_s": LEASE_TTL_S}}


async def check(r: httpx.Response, what: str) -> httpx.Response:
    if r.status_code not in (200, 201):
        raise RuntimeError(f"{what}: HTTP {r.status_code}: {r.text[:300]}")
    return r


# ------------------------------------------------------------------------------------------
# the renewal benchmark


@dataclass
class Lease:
    worker_id: str
    run_id: str
    epoch: int


async def post(client: httpx.AsyncClient, url: str, body: dict, what: str, *, also_ok: tuple[int, ...] = ()) -> Any:
    """POST for the setup; a keep-alive connection the server closed meanwhile is retried."""
    for attempt in range(3):
        try:
            r = await client.post(url, json=body)
        except httpx.TransportError:
            if attempt == 2:
                raise
            continue
        if r.status_code in (200, 201):
            return r.json()
        if attempt > 0 and r.status_code in also_ok:  # the first try got through after all
            return None
        raise RuntimeError(f"{what}: HTTP {r.status_code}: {r.text[:300]}")


async def setup_leases(base_url: str, admin_token: str, worker_token: str, first: int, last: int,
                       concurrency: int) -> list[Lease]:
    """Workers w{first..last-1}: each submits run r{i} (admin token), registers and claims a run
    with ``wait_s=0`` (worker token). Pipelined per worker, so the queue stays short."""

    async def one(i: int) -> Lease:
        w = f"w{i:06d}"
        await post(admin, "/api/v1/runs", run_doc(f"r{i:06d}"), "submit", also_ok=(409,))
        await post(worker, "/api/v1/workers/register", {"worker_id": w}, "register")
        # On PostgreSQL a claim can answer "nothing" while runs are queued: the other claimers'
        # transactions hold the candidate rows (FOR UPDATE SKIP LOCKED). Retry, bounded.
        for _ in range(500):
            grant = (await post(worker, "/api/v1/leases/claim", {"worker_id": w, "wait_s": 0}, "claim"))["grant"]
            if grant is not None:
                return Lease(w, grant["run_id"], grant["epoch"])
            await asyncio.sleep(0.01)
        raise RuntimeError(f"worker {w} got no run in 500 tries")

    async with make_client(base_url, admin_token, concurrency) as admin, \
            make_client(base_url, worker_token, concurrency) as worker:
        return await bounded_map(one, list(range(first, last)), concurrency)


def renew_requests(leases: list[Lease]) -> list[tuple[str, str, bytes | None]]:
    return [("POST", f"/api/v1/runs/{x.run_id}/lease/renew",
             json.dumps({"worker_id": x.worker_id, "epoch": x.epoch}).encode()) for x in leases]


async def server_renew_stats(base_url: str, admin_token: str) -> tuple[float, float]:
    """(sum of seconds, count) of 200 renewals in the server's own latency histogram."""
    async with make_client(base_url, admin_token, 1) as admin:
        text = (await admin.get("/metrics")).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("relay_request_seconds_") and "/lease/renew" in line and 'status="200"' in line:
            name, value = line.rsplit(" ", 1)
            if name.startswith("relay_request_seconds_sum"):
                total += float(value)
            elif name.startswith("relay_request_seconds_count"):
                count += float(value)
    return total, count


def store_direct(db: str, leases: list[Lease], seconds: float) -> dict[str, float]:
    """``Store.renew_lease`` in this process, one thread, round-robin over the leases."""
    from relaytrain.commander.store import Store

    store = Store(db)
    try:
        n = done = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            x = leases[n % len(leases)]
            store.renew_lease(x.run_id, x.worker_id, x.epoch)
            n += 1
            done += 1
        dt = time.perf_counter() - t0
    finally:
        store.close()
    return {"rate": done / dt, "mean_ms": dt / done * 1e3 if done else float("nan")}


async def renewal_bench(server: Server, admin_token: str, args: argparse.Namespace, db: str) -> dict[str, Any]:
    out: dict[str, Any] = {"by_workers": {}}
    pid = server.proc.pid
    timing = {"warmup": args.warmup, "duration": args.duration, "server_pid": pid, "quiet_s": args.quiet_wait}
    async with make_client(server.url, admin_token, 1) as admin:
        token = (await check(await admin.post("/api/v1/tokens", json={"name": "bench", "scope": "worker"}),
                             "token")).json()["token"]
    ceiling = [("GET", server.ceiling_path, None)]
    async with make_lanes(server.url, token, args.concurrency, args.shared_pool) as lanes:
        leases: list[Lease] = []
        for n in sorted(args.workers):
            t = time.perf_counter()
            leases += await setup_leases(server.url, admin_token, token, len(leases), n,
                                         args.setup_concurrency)
            say(f"  {n} workers: set up through the API in {time.perf_counter() - t:.1f} s")
            reqs = renew_requests(leases[:n])
            s0 = await server_renew_stats(server.url, admin_token)
            both = await closed_loops(lanes, {"ceiling": ceiling, "max": reqs}, slices=args.slices, **timing)
            s1 = await server_renew_stats(server.url, admin_token)
            mx = both["max"]
            if s1[1] > s0[1]:
                mx["server_ms"] = (s1[0] - s0[0]) / (s1[1] - s0[1]) * 1e3
            mx["ttl_at_max_s"] = 3 * n / mx["rate"] if mx["rate"] else float("inf")
            say(f"    ceiling: {fmt_rate(both['ceiling'])}  (GET {server.ceiling_path})")
            say(f"    max:     {fmt_rate(mx)}  (each worker every {n / max(mx['rate'], 1e-9):.2f} s)")
            paced = await paced_loop(lanes, reqs, rate=args.rate, **timing)
            paced["ttl_s"] = 3 * n / args.rate
            say(f"    paced:   {fmt_rate(paced)}  offered {args.rate:.0f}/s (ttl {paced['ttl_s']:.2f} s)")
            out["by_workers"][n] = {"ceiling": both["ceiling"], "max": mx, "paced": paced}
        if args.store_seconds > 0 and leases:
            out["store"] = await asyncio.to_thread(store_direct, db, leases[: max(args.workers)],
                                                   args.store_seconds)
            say(f"  store.renew_lease direct: {out['store']['rate']:.0f}/s, {out['store']['mean_ms']:.2f} ms each")
    return out


# ------------------------------------------------------------------------------------------
# the claim benchmark


def seed_queue(db: str, n: int) -> None:
    """``n`` queued runs: the first through ``Store.submit_run``, the rest copies of its rows."""
    import sqlalchemy as sa

    from relaytrain.commander.store import Store
    from relaytrain.commander.store.schema import events, runs
    from relaytrain.config import parse_run_config

    store = Store(db)
    try:
        store.upgrade()
        first = "q000000"
        store.submit_run(parse_run_config(run_doc(first)))
        with store.engine.begin() as conn:
            row = dict(conn.execute(sa.select(runs).where(runs.c.run_id == first)).mappings().one())
            ev = dict(conn.execute(sa.select(events).where(events.c.run_id == first)).mappings().one())
            ev.pop("id")
            rows, evs = [], []
            for i in range(1, n):
                rid = f"q{i:06d}"
                t = row["created_at"] + i * 1e-6
                rows.append({**row, "run_id": rid, "config": {**row["config"], "run_id": rid},
                             "created_at": t, "updated_at": t, "not_before": t})
                evs.append({**ev, "run_id": rid, "ts": t})
            for chunk in range(0, len(rows), 2000):
                conn.execute(runs.insert(), rows[chunk:chunk + 2000])
                conn.execute(events.insert(), evs[chunk:chunk + 2000])
        if store.dialect == "postgresql":
            # What autovacuum does within a minute of a bulk change. Without statistics the planner
            # sorts the whole queue on every claim instead of reading the head of ix_runs_claim.
            with store.engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE runs")
    finally:
        store.close()


def attempts_per_run(db: str) -> dict[str, list[int]]:
    from relaytrain.commander.store import Store

    store = Store(db)
    try:
        seen: dict[str, list[int]] = {}
        for a in store.attempts_table():
            seen.setdefault(a["run_id"], []).append(a["epoch"])
        return seen
    finally:
        store.close()


async def claim_bench(server: Server, admin_token: str, args: argparse.Namespace) -> dict[str, Any]:
    total = args.queue
    grants: list[tuple[str, int, str]] = []
    lat: list[float] = []
    empty = 0
    async with make_client(server.url, admin_token, args.claimers) as admin:
        token = (await check(await admin.post("/api/v1/tokens", json={"name": "bench", "scope": "worker"}),
                             "token")).json()["token"]
    async with make_lanes(server.url, token, args.claimers, args.shared_pool) as lanes:
        workers = [f"c{i:03d}" for i in range(args.claimers)]
        for w, client in zip(workers, lanes, strict=True):
            await check(await client.post("/api/v1/workers/register", json={"worker_id": w}), "register")
        errors: dict[str, int] = {}
        await wait_quiet(server.proc.pid, args.quiet_wait)
        deadline = time.perf_counter() + args.claim_seconds
        cpu0 = CpuSample.take(server.proc.pid)
        t0 = time.perf_counter()

        async def claimer(w: str, client: httpx.AsyncClient) -> None:
            nonlocal empty
            body = json.dumps({"worker_id": w, "wait_s": 0}).encode()
            while len(grants) < total and time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    r = await client.post("/api/v1/leases/claim", content=body)
                    status: int | str = r.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                if status != 200:
                    errors[str(status)] = errors.get(str(status), 0) + 1
                    continue
                grant = r.json()["grant"]
                if grant is None:
                    empty += 1
                    await asyncio.sleep(0.005)
                    continue
                lat.append(time.perf_counter() - t)
                grants.append((grant["run_id"], grant["epoch"], w))

        await asyncio.gather(*(claimer(w, c) for w, c in zip(workers, lanes, strict=True)))
        wall = time.perf_counter() - t0
        cpu = cpu0.until(CpuSample.take(server.proc.pid))
    pairs: dict[tuple[str, int], int] = {}
    per_run: dict[str, int] = {}
    for run_id, epoch, _ in grants:
        pairs[(run_id, epoch)] = pairs.get((run_id, epoch), 0) + 1
        per_run[run_id] = per_run.get(run_id, 0) + 1
    lat.sort()
    return {
        "queued": total,
        "granted": len(grants),
        "drained": len(grants) >= total,
        "distinct_runs": len(per_run),
        "wall_s": wall,
        "rate": len(grants) / wall if wall else float("nan"),
        "p50_ms": pct(lat, 0.5) * 1e3,
        "p99_ms": pct(lat, 0.99) * 1e3,
        "empty_answers": empty,
        "errors": errors,
        "double_grants_api": sum(c - 1 for c in pairs.values() if c > 1)
        + sum(c - 1 for c in per_run.values() if c > 1),
        "not_epoch_1": sum(1 for (_, e) in pairs if e != 1),
        **cpu,
    }


# ------------------------------------------------------------------------------------------
# driver and report


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def say(msg: str) -> None:
    print(msg, flush=True)


NAN = float("nan")
DISTURBED = 0.25  # cores used by other processes above which a window is marked as disturbed


def fmt_rate(s: dict[str, Any]) -> str:
    errs = f"  non-200: {s['errors']}" if s.get("errors") else ""
    cpu = (f"  cpu: server {s.get('server_cpu', NAN):.2f} client {s.get('client_cpu', NAN):.2f} "
           f"postgres {s.get('db_cpu', NAN):.2f} other {s.get('other_cpu', NAN):.2f}")
    per = f"  cpu/req: server {s.get('server_us', NAN):.0f} us client {s.get('client_us', NAN):.0f} us"
    return f"{s['rate']:7.0f}/s  p50 {s['p50_ms']:6.2f} ms  p99 {s['p99_ms']:6.2f} ms{cpu}{per}{errs}"


def bench_database(kind: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    admin_token = f"bench-admin-{uuid.uuid4().hex}"
    result: dict[str, Any] = {}
    with fresh_database(kind, tmp, args.pg_url) as db:
        server = Server(db, admin_token, tmp, mode=args.server, factory=args.app_factory)
        try:
            server.start()
            say(f"[{kind}] renewals: server pid {server.proc.pid} on {server.url}; load average {loadavg()}")
            result["renew"] = asyncio.run(renewal_bench(server, admin_token, args, db))
        except BaseException:
            say(f"server log ({server.log}):\n{server.log_tail()}")
            raise
        finally:
            server.stop()
    if args.queue > 0:
        with fresh_database(kind, tmp, args.pg_url) as db:
            t = time.perf_counter()
            seed_queue(db, args.queue)
            say(f"[{kind}] claims: {args.queue} runs queued in {time.perf_counter() - t:.1f} s")
            server = Server(db, admin_token, tmp, mode=args.server, factory=args.app_factory)
            try:
                server.start()
                claims = asyncio.run(claim_bench(server, admin_token, args))
            except BaseException:
                say(f"server log ({server.log}):\n{server.log_tail()}")
                raise
            finally:
                server.stop()
            epochs = attempts_per_run(db)
            claims["db_runs_with_attempts"] = len(epochs)
            claims["db_matches_api"] = len(epochs) == claims["distinct_runs"]
            claims["double_grants_db"] = sum(len(v) - 1 for v in epochs.values() if len(v) > 1) + sum(
                1 for v in epochs.values() for e in v if e != 1)
            claims["double_grants"] = claims["double_grants_api"] + claims["not_epoch_1"] + claims["double_grants_db"]
            result["claims"] = claims
            say(f"  {claims['granted']}/{claims['queued']} granted in {claims['wall_s']:.1f} s: "
                f"{claims['rate']:.0f} claims/s, p50 {claims['p50_ms']:.1f} ms, p99 {claims['p99_ms']:.1f} ms, "
                f"double grants {claims['double_grants']}, empty answers {claims['empty_answers']}, "
                f"runs with an attempt in the DB {claims['db_runs_with_attempts']}")
    return result


def _cpu_cells(s: dict[str, Any]) -> str:
    flag = " *" if s.get("other_cpu", 0) > DISTURBED else ""
    return (f"{s.get('server_cpu', NAN):.2f} | {s.get('client_cpu', NAN):.2f} | {s.get('db_cpu', NAN):.2f} | "
            f"{s.get('other_cpu', NAN):.2f}{flag}")


def report(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    ceiling = "no-op" if args.server == "bench" else "health"
    lines = [
        "Renewals (CPU columns: cores busy over the window; * = other processes used more than "
        f"{DISTURBED} cores, the figure is disturbed)",
        "",
        "| db | workers | phase | offered/s | done/s | p50 ms | p99 ms | non-200 "
        "| CPU server | CPU client | CPU postgres | CPU other |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, res in results.items():
        r = res["renew"]
        rows = []
        for n, by in r["by_workers"].items():
            rows.append((n, f"ceiling ({ceiling})", "closed", by["ceiling"]))
            rows.append((n, "renew max", "closed", by["max"]))
            rows.append((n, f"renew paced (ttl {by['paced']['ttl_s']:.2f} s)", f"{args.rate:.0f}", by["paced"]))
        for w, phase, offered, s in rows:
            lines.append(f"| {kind} | {w} | {phase} | {offered} | {s['rate']:.0f} | {s['p50_ms']:.2f} | "
                         f"{s['p99_ms']:.2f} | {sum(s['errors'].values())} | {_cpu_cells(s)} |")
    lines += [
        "",
        "| db | workers | max / ceiling | ttl at max (3N/rate) | server CPU us/renew | client CPU us/req "
        "| in-app ms/renew (incl. queueing) | paced send lag p99 ms | Store.renew_lease alone /s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, res in results.items():
        r = res["renew"]
        store = r.get("store", {}).get("rate", NAN)
        for n, by in r["by_workers"].items():
            mx = by["max"]
            lines.append(f"| {kind} | {n} | {mx['rate'] / by['ceiling']['rate']:.2f} | {mx['ttl_at_max_s']:.2f} s | "
                         f"{mx.get('server_us', NAN):.0f} | {mx.get('client_us', NAN):.0f} | "
                         f"{mx.get('server_ms', NAN):.1f} | {by['paced'].get('lag_p99_ms', NAN):.0f} | {store:.0f} |")
    claims = {kind: res["claims"] for kind, res in results.items() if "claims" in res}
    if claims:
        lines += [
            "",
            "| db | queued | claimers | granted (in s) | claims/s | p50 ms | p99 ms | double grants | empty answers "
            "| CPU server | CPU client | CPU postgres | CPU other |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for kind, c in claims.items():
            lines.append(f"| {kind} | {c['queued']} | {args.claimers} | {c['granted']} ({c['wall_s']:.0f} s) | "
                         f"{c['rate']:.0f} | {c['p50_ms']:.1f} | {c['p99_ms']:.1f} | {c['double_grants']} | "
                         f"{c['empty_answers']} | {_cpu_cells(c)} |")
    lines.append("")
    for kind, res in results.items():
        r = res["renew"]
        for n, by in r["by_workers"].items():
            p = by["paced"]
            ok = p["rate"] >= 0.99 * args.rate and p["p99_ms"] <= 50
            ratio = by["max"]["rate"] / by["ceiling"]["rate"]
            lines.append(f"- {kind}, {n} workers: paced {p['rate']:.0f}/s at p99 {p['p99_ms']:.1f} ms: "
                         f"{'meets' if ok else 'misses'} >= {args.rate:.0f}/s with p99 <= 50 ms; "
                         f"max/ceiling {ratio:.2f}: {'meets' if ratio >= 0.5 else 'misses'} >= 0.5")
        if kind in claims:
            c = claims[kind]
            dg = c["double_grants"]
            same = "" if c.get("db_matches_api", True) else " (the database holds attempts the API did not report!)"
            lines.append(f"- {kind}: {dg} double grants in {c['granted']} claims: "
                         f"{'meets' if dg == 0 else 'MISSES'} 0{same}")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve(argv[1:])
        return 0
    p = argparse.ArgumentParser(prog="python -m bench.commander_load", description=__doc__.split("\n", 1)[0])
    p.add_argument("--db", default="sqlite,postgresql", help="comma list of sqlite, postgresql")
    p.add_argument("--workers", default="1000,5000", help="comma list of worker counts")
    p.add_argument("--duration", type=float, default=10.0, help="measured window, seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before each window")
    p.add_argument("--slices", type=int, default=5,
                   help="the ceiling and the max renewals alternate in this many slices of the window")
    p.add_argument("--rate", type=float, default=2000.0, help="offered renewals/s of the paced phase")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight (one connection each)")
    p.add_argument("--shared-pool", action="store_true",
                   help="one AsyncClient with a pool of --concurrency connections instead of one client per lane")
    p.add_argument("--setup-concurrency", type=int, default=32)
    p.add_argument("--queue", type=int, default=10_000, help="runs queued for the claim benchmark (0: skip)")
    p.add_argument("--claimers", type=int, default=32)
    p.add_argument("--claim-seconds", type=float, default=20.0,
                   help="claimers stop when the queue is drained or after this long (claims/s over what ran)")
    p.add_argument("--quiet-wait", type=float, default=0.0,
                   help="before each measured phase, wait up to this long for other processes to use under "
                        f"{DISTURBED} cores (on a shared machine)")
    p.add_argument("--store-seconds", type=float, default=3.0, help="direct Store.renew_lease phase (0: skip)")
    p.add_argument("--server", choices=("bench", "relay"), default="bench",
                   help="bench: relay serve + GET /bench/noop (default); relay: the plain relay serve")
    p.add_argument("--app-factory", default="bench.commander_load:make_app",
                   help="module:function(db, token, sweep_interval_s) -> app, for the bench server; to measure a "
                        "candidate change before/after (the module must be importable by the server process)")
    p.add_argument("--pg-url", default=PG_URL, help="PostgreSQL server to create scratch databases on")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    args.workers = [int(x) for x in args.workers.split(",") if x.strip()]
    kinds = [x.strip() for x in args.db.split(",") if x.strip()]
    for k in kinds:
        if k not in ("sqlite", "postgresql"):
            p.error(f"--db: unknown database {k!r}")
    say(f"machine: {platform.node()}, {os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"Python {platform.python_version()}, httpx {httpx.__version__}; load average {loadavg()}")
    say(f"command: python -m bench.commander_load {' '.join(argv)}".rstrip())

    def _terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the cleanups below

    signal.signal(signal.SIGTERM, _terminate)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background
        signal.signal(signal.SIGINT, _terminate)
    results: dict[str, Any] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for kind in kinds:
            if kind == "postgresql":
                why = pg_available(args.pg_url)
                if why:
                    say(f"[postgresql] skipped: {args.pg_url} does not answer ({why})")
                    continue
            results[kind] = bench_database(kind, args, tmp)
    say("")
    for line in report(results, args):
        say(line)
    say(f"\n(total {time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
