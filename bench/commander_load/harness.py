"""What the commander load benchmark's sections share (see the package docstring): the server
(the tests' ``Commander``, running server.py or ``relay serve``), fresh databases (the tests'
``fresh_database``), the worker token, CPU accounting from /proc, the load generators (closed
and paced loops over lanes of keep-alive connections) and the driver that runs sections per
database and prints their report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.commander_load.server import DEFAULT_FACTORY, NOOP_PATH
from tests.support.commander import PG_URL as TEST_PG_URL
from tests.support.commander import Commander, fresh_database, pg_problem

PG_URL = os.environ.get("RELAY_BENCH_PG_URL", TEST_PG_URL)
LEASE_TTL_S = 3600.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
NAN = float("nan")
DISTURBED = 0.25  # cores used by other processes above which a window is marked as disturbed
REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------
# the server, its database and tokens


@dataclass
class BenchCommander(Commander):
    """The tests' ``Commander`` running the benchmark's server (``mode="bench"``: server.py, with
    the no-op route and ``factory``) or the plain ``relay serve`` (``mode="relay"``)."""

    sweep_interval: float = 5.0  # relay serve's default
    mode: str = "bench"
    factory: str = DEFAULT_FACTORY

    def command(self) -> list[str]:
        if self.mode == "relay":
            return super().command()
        return [sys.executable, "-m", "bench.commander_load.server", "--db", self.db, "--port", str(self.port),
                "--sweep-interval", str(self.sweep_interval), "--log-level", "warning", "--app-factory", self.factory]

    @property
    def ceiling_path(self) -> str:
        return NOOP_PATH if self.mode == "bench" else "/api/v1/health"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def worker_token(self) -> str:
        """A new worker-scoped token, made with the admin token through the API."""
        with self.client() as admin:
            return admin.create_token("bench", "worker").token


@contextlib.contextmanager
def database(kind: str, tmp: Path, args: argparse.Namespace) -> Iterator[str]:
    """A fresh database of ``kind`` (a folder of its own under ``tmp`` for SQLite)."""
    with fresh_database(kind, Path(tempfile.mkdtemp(prefix="db-", dir=tmp)), args.pg_url) as db:
        yield db


@contextlib.contextmanager
def bench_server(db: str, tmp: Path, args: argparse.Namespace) -> Iterator[BenchCommander]:
    """The server of ``--server`` on ``db``, with a new admin token; its log is printed if the
    section fails."""
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    server = BenchCommander(db=db, token=f"bench-admin-{uuid.uuid4().hex}", workdir=tmp, mode=args.server,
                            factory=args.app_factory, env={"PYTHONPATH": pythonpath})
    try:
        server.start(timeout_s=60)
        yield server
    except BaseException:
        say(f"server log ({server.log_path}):\n{server.log_tail()}")
        raise
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------
# CPU accounting


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


# ------------------------------------------------------------------------------------------
# report and driver


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def say(msg: str) -> None:
    print(msg, flush=True)


def fmt_rate(s: dict[str, Any]) -> str:
    errs = f"  non-200: {s['errors']}" if s.get("errors") else ""
    cpu = (f"  cpu: server {s.get('server_cpu', NAN):.2f} client {s.get('client_cpu', NAN):.2f} "
           f"postgres {s.get('db_cpu', NAN):.2f} other {s.get('other_cpu', NAN):.2f}")
    per = f"  cpu/req: server {s.get('server_us', NAN):.0f} us client {s.get('client_us', NAN):.0f} us"
    return f"{s['rate']:7.0f}/s  p50 {s['p50_ms']:6.2f} ms  p99 {s['p99_ms']:6.2f} ms{cpu}{per}{errs}"


def cpu_cells(s: dict[str, Any]) -> str:
    flag = " *" if s.get("other_cpu", 0) > DISTURBED else ""
    return (f"{s.get('server_cpu', NAN):.2f} | {s.get('client_cpu', NAN):.2f} | {s.get('db_cpu', NAN):.2f} | "
            f"{s.get('other_cpu', NAN):.2f}{flag}")


@dataclass
class Section:
    """One part of the benchmark: its options, its run on one database kind (the result, or None
    when skipped) and its part of the report."""

    key: str
    """Its results' key under each database kind."""
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[str, argparse.Namespace, Path], dict[str, Any] | None]
    tables: Callable[[dict[str, dict[str, Any]], argparse.Namespace], list[str]]
    """Markdown tables of ``{kind: result}``."""
    verdicts: Callable[[str, dict[str, Any], argparse.Namespace], list[str]]
    """One line per target, met or missed, for one kind's result."""


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default="sqlite,postgresql", help="comma list of sqlite, postgresql")
    p.add_argument("--shared-pool", action="store_true",
                   help="one AsyncClient with a pool of all the lanes' connections instead of one client per lane")
    p.add_argument("--quiet-wait", type=float, default=0.0,
                   help="before each measured phase, wait up to this long for other processes to use under "
                        f"{DISTURBED} cores (on a shared machine)")
    p.add_argument("--server", choices=("bench", "relay"), default="bench",
                   help="bench: relay serve + GET /bench/noop (default); relay: the plain relay serve")
    p.add_argument("--app-factory", default=DEFAULT_FACTORY,
                   help="module:function(db, token, sweep_interval_s) -> app, for the bench server; to measure a "
                        "candidate change before/after (the module must be importable by the server process)")
    p.add_argument("--pg-url", default=PG_URL, help="PostgreSQL server to create scratch databases on")
    p.add_argument("--json", type=Path, help="also write the figures here")


def parse_args(module: str, doc: str, sections: list[Section], argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n", 1)[0])
    add_common_arguments(p)
    for section in sections:
        section.add_arguments(p)
    args = p.parse_args(argv)
    args.kinds = [x.strip() for x in args.db.split(",") if x.strip()]
    for k in args.kinds:
        if k not in ("sqlite", "postgresql"):
            p.error(f"--db: unknown database {k!r}")
    return args


def run_sections(sections: list[Section], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """``{kind: {section key: result}}`` of every section on each database of ``--db``."""
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp_name:
        for kind in args.kinds:
            if kind == "postgresql" and (why := pg_problem(args.pg_url)):
                say(f"[postgresql] skipped: {args.pg_url} does not answer ({why})")
                continue
            results[kind] = {}
            for section in sections:
                result = section.run(kind, args, Path(tmp_name))
                if result is not None:
                    results[kind][section.key] = result
    return results


def report(sections: list[Section], results: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """Each section's tables, then every target met or missed, per database."""
    lines: list[str] = []
    for section in sections:
        done = {kind: res[section.key] for kind, res in results.items() if section.key in res}
        if done:
            lines += [*section.tables(done, args), ""]
    for kind, res in results.items():
        lines += [line for section in sections if section.key in res
                  for line in section.verdicts(kind, res[section.key], args)]
    return lines


def main(module: str, doc: str, sections: list[Section], argv: list[str] | None = None) -> int:
    """``python -m <module>``: run ``sections`` (in order) on each database of ``--db``, then
    print their report."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(module, doc, sections, argv)
    say(f"machine: {platform.node()}, {os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"Python {platform.python_version()}, httpx {httpx.__version__}; load average {loadavg()}")
    say(f"command: python -m {module} {' '.join(argv)}".rstrip())

    def _terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the cleanups

    signal.signal(signal.SIGTERM, _terminate)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background
        signal.signal(signal.SIGINT, _terminate)
    started = time.perf_counter()
    results = run_sections(sections, args)
    say("")
    for line in report(sections, results, args):
        say(line)
    say(f"\n(total {time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0
