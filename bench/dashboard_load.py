"""Dashboard load benchmark: what the web page and ``relay report`` ask of a commander holding a
large history, and what metric ingest costs the lease renewals.

    python -m bench.dashboard_load                                   # both sections, SQLite (~4 min here)
    python -m bench.dashboard_load --sections reads --runs 1000 --points 1000000
    python -m bench.dashboard_load --sections ingest --workers 1000 --ingest-rates 100,1000

Reads. A fresh database (``--db``, SQLite by default) is filled with ``--runs`` runs (1,000) and
``--points`` metric points (1,000,000): run ``big`` gets a ``--big-series`` point ``loss`` series
(100,000) and the rest are spread over the other runs, 3 metrics each, the rows interleaved as runs
reporting at the same time write them; ``--running`` of them (50)
hold a lease, so the runs page mixes statuses. Runs go in through ``Store.submit_run`` and
``claim_run``, points as rows of the ``metrics`` table in batches (what ``record_progress``
writes, faster). Then the benchmark's server (bench/commander_load: ``relay serve``'s app in one
uvicorn process) answers, one request at a time from one keep-alive connection, ``--requests``
(200) of each:

* ``runs page``: ``GET /api/v1/runs?limit=50``, the first page of the runs list;
* ``runs page (running)``: the same filtered on ``status=running``;
* ``chart 100k``: ``GET /api/v1/runs/big/metrics?name=loss&max_points=2000``, the 100,000-point
  series downsampled on the server to what a chart can show;
* ``run page charts``: every series of ``big`` at ``max_points=2000``;
* ``names``: ``GET /api/v1/runs/big/metrics/names``.

Latency is client-side, send to full response; p50, p95, p99 and max. Targets: runs page p95 <=
100 ms, chart 100k p95 <= 200 ms.

Ingest. A fresh database; ``--workers`` (1,000) workers each hold a lease (set up through the
API as bench/commander_load.renewals does). Renewals run in a closed loop (``--concurrency``
lanes, as commander_load's "renew max") in ``--slices`` alternating slices: alone, then with a
paced metric ingest beside it (progress posts of ``--points-per-post`` points of
``--metrics-per-point`` metrics each, at each of ``--ingest-rates`` posts/s, spread over the
workers on 16 lanes of their own: 1,000 workers reporting every second, the worker's default
interval, is 1,000 posts/s). The figure is renewals/s with ingest ÷ renewals/s alone, from
slices interleaved so that other load on the machine weighs on both alike. Target: >= 0.90.

Only 127.0.0.1 is contacted; the server is stopped and the databases removed on every exit path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.commander_load.harness import (
    bench_server,
    closed_loops,
    database,
    loadavg,
    make_lanes,
    paced_loop,
    pct,
    run_doc,
    say,
)
from bench.commander_load.renewals import renew_requests, setup_leases
from bench.commander_load.server import DEFAULT_FACTORY
from tests.support.commander import PG_URL

BIG = "big"
PAGE = 50
CHART_POINTS = 2000
INGEST_LANES = 16


# -- reads ---------------------------------------------------------------------------------------


def seed(db: str, args: argparse.Namespace) -> dict[str, Any]:
    """``args.runs`` runs (``args.running`` of them leased) and ``args.points`` metric points."""
    from relaytrain.commander.store import Store
    from relaytrain.commander.store.schema import metrics
    from relaytrain.config import parse_run_config

    t0 = time.perf_counter()
    store = Store(db)
    try:
        store.upgrade()
        run_ids = [BIG] + [f"run-{i:05d}" for i in range(1, args.runs)]
        for i, run_id in enumerate(run_ids):
            store.submit_run(parse_run_config(run_doc(run_id)), now=1_000_000 + i)
        for i in range(args.running):
            store.claim_run(f"w{i:04d}", now=2_000_000)
        epochs = {r["run_id"]: max(r["epoch"], 1) for r in store.list_runs(limit=500)["items"]}
        rng = random.Random(0)
        others = run_ids[1:]
        per_run = (args.points - args.big_series) // max(1, len(others))
        steps_per_metric = max(1, per_run // 3)

        def rows():
            """Interleaved as concurrent runs report: at each tick every run adds its next points."""
            per_tick = math.ceil(args.big_series / steps_per_metric)
            for tick in range(steps_per_metric):
                for s in range(tick * per_tick + 1, min(args.big_series, (tick + 1) * per_tick) + 1):
                    yield {"run_id": BIG, "epoch": 1, "step": s, "name": "loss",
                           "value": 2.0 / math.sqrt(s) + rng.gauss(0, 0.02), "ts": 3_000_000 + tick}
                for run_id in others:
                    for name in ("loss", "reward", "lr"):
                        yield {"run_id": run_id, "epoch": epochs.get(run_id, 1), "step": tick + 1, "name": name,
                               "value": rng.random(), "ts": 3_000_000 + tick}
            # what the division left over, so that the total is --points: run big's "lr"
            for s in range(1, args.points - args.big_series - 3 * steps_per_metric * len(others) + 1):
                yield {"run_id": BIG, "epoch": 1, "step": s, "name": "lr", "value": 1e-4, "ts": 4_000_000}

        written = 0
        with store.engine.begin() as conn:
            batch = []
            for row in rows():
                batch.append(row)
                if len(batch) == 10_000:
                    conn.execute(metrics.insert(), batch)
                    written += len(batch)
                    batch = []
            if batch:
                conn.execute(metrics.insert(), batch)
                written += len(batch)
        if store.dialect == "postgresql":
            with store.engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")
    finally:
        store.close()
    return {"runs": len(run_ids), "points": written, "seconds": time.perf_counter() - t0}


def timed(client: httpx.Client, path: str, n: int) -> dict[str, Any]:
    """``n`` sequential GETs of ``path``: latency percentiles (ms) and the answer's size."""
    lat = []
    size = 0
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(path)
        lat.append(time.perf_counter() - t)
        if r.status_code != 200:
            raise RuntimeError(f"GET {path}: HTTP {r.status_code}: {r.text[:300]}")
        size = len(r.content)
    lat.sort()
    return {"path": path, "n": n, "p50_ms": pct(lat, 0.5) * 1e3, "p95_ms": pct(lat, 0.95) * 1e3,
            "p99_ms": pct(lat, 0.99) * 1e3, "max_ms": lat[-1] * 1e3, "bytes": size}


def reads(kind: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    with database(kind, tmp, args) as db:
        seeded = seed(db, args)
        say(f"[{kind}] seeded {seeded['runs']} runs, {seeded['points']} points in {seeded['seconds']:.0f} s")
        with bench_server(db, tmp, args) as server:
            queries = {
                "runs page": f"/api/v1/runs?limit={PAGE}",
                "runs page (running)": f"/api/v1/runs?limit={PAGE}&status=running",
                "chart 100k": f"/api/v1/runs/{BIG}/metrics?name=loss&max_points={CHART_POINTS}",
                "run page charts": f"/api/v1/runs/{BIG}/metrics?max_points={CHART_POINTS}",
                "names": f"/api/v1/runs/{BIG}/metrics/names",
            }
            out: dict[str, Any] = {"seeded": seeded, "queries": {}}
            headers = {"Authorization": f"Bearer {server.token}"}
            with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
                for label, path in queries.items():
                    timed(client, path, 5)  # warm the connection and the database's pages
                    out["queries"][label] = r = timed(client, path, args.requests)
                    say(f"  {label:22s} p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  "
                        f"p99 {r['p99_ms']:7.1f} ms  ({r['bytes']} bytes)")
                chart = client.get(queries["chart 100k"]).json()["items"]
                out["chart_points"] = len(chart)
                out["chart_ends"] = [chart[0]["step"], chart[-1]["step"]]
    return out


# -- ingest --------------------------------------------------------------------------------------


def progress_requests(leases: list[Any], args: argparse.Namespace) -> list[tuple[str, str, bytes | None]]:
    """One progress post per lease and step (4 steps each), ``points_per_post`` points apiece."""
    out = []
    names = [f"m{j:02d}" for j in range(args.metrics_per_point)]
    for step in range(4):
        for x in leases:
            points = [{"step": step * args.points_per_post + k + 1, "metrics": {n: random.random() for n in names}}
                      for k in range(args.points_per_post)]
            body = json.dumps({"worker_id": x.worker_id, "epoch": x.epoch, "points": points}).encode()
            out.append(("POST", f"/api/v1/runs/{x.run_id}/progress", body))
    return out


async def ingest_bench(server: Any, args: argparse.Namespace) -> dict[str, Any]:
    token = server.worker_token()
    t = time.perf_counter()
    leases = await setup_leases(server.url, server.token, token, 0, args.workers, 32)
    say(f"  {args.workers} workers: set up through the API in {time.perf_counter() - t:.1f} s")
    renewals = renew_requests(leases)
    posts = progress_requests(leases, args)
    timing = {"warmup": args.warmup, "duration": args.duration / args.slices, "server_pid": server.pid,
              "quiet_s": args.quiet_wait}
    out: dict[str, Any] = {"leases": leases, "rates": {}}
    async with make_lanes(server.url, token, args.concurrency, False) as lanes, \
            make_lanes(server.url, token, INGEST_LANES, False) as ingest_lanes:
        for rate in args.ingest_rates:
            alone, beside, ingested = [], [], []
            for _ in range(args.slices):
                alone.append((await closed_loops(lanes, {"renew": renewals}, slices=1, **timing))["renew"])
                both = await asyncio.gather(
                    closed_loops(lanes, {"renew": renewals}, slices=1, **timing),
                    paced_loop(ingest_lanes, posts, rate=rate, **timing),
                )
                beside.append(both[0]["renew"])
                ingested.append(both[1])
            row = {
                "alone": statistics.fmean(s["rate"] for s in alone),
                "with_ingest": statistics.fmean(s["rate"] for s in beside),
                "alone_p99_ms": statistics.median(s["p99_ms"] for s in alone),
                "with_ingest_p99_ms": statistics.median(s["p99_ms"] for s in beside),
                "ingest_done": statistics.fmean(s["rate"] for s in ingested),
                "ingest_p99_ms": statistics.median(s["p99_ms"] for s in ingested),
                "ingest_errors": sum(sum(s["errors"].values()) for s in ingested),
                "server_cpu_alone": statistics.fmean(s.get("server_cpu", math.nan) for s in alone),
                "server_cpu_with": statistics.fmean(s.get("server_cpu", math.nan) for s in beside),
            }
            row["ratio"] = row["with_ingest"] / row["alone"] if row["alone"] else math.nan
            out["rates"][rate] = row
            say(f"  ingest {rate:.0f} posts/s ({row['ingest_done']:.0f} done, p99 {row['ingest_p99_ms']:.1f} ms): "
                f"renewals {row['alone']:.0f}/s alone, {row['with_ingest']:.0f}/s beside it: {row['ratio']:.2f}")
    return out


def store_direct(db: str, leases: list[Any], args: argparse.Namespace, seconds: float) -> dict[str, float]:
    """In this process, one thread, no HTTP: ``Store.renew_lease`` and ``Store.record_progress`` (one
    post's points) round-robin over the leases, each for ``seconds``: what one of each costs the store."""
    from relaytrain.commander.store import Store

    names = [f"m{j:02d}" for j in range(args.metrics_per_point)]
    store = Store(db)
    out = {}
    try:
        for label in ("renew", "progress"):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                x = leases[n % len(leases)]
                if label == "renew":
                    store.renew_lease(x.run_id, x.worker_id, x.epoch)
                else:
                    points = [{"step": 1000 + n, "metrics": {m: 0.5 for m in names}}] * args.points_per_post
                    store.record_progress(x.run_id, x.worker_id, x.epoch, points)
                n += 1
            out[f"{label}_ms"] = (time.perf_counter() - t0) / n * 1e3
    finally:
        store.close()
    return out


def ingest(kind: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    with database(kind, tmp, args) as db, bench_server(db, tmp, args) as server:
        say(f"[{kind}] ingest: server pid {server.pid}; load average {loadavg()}")
        out = asyncio.run(ingest_bench(server, args))
        leases = out.pop("leases")
        out["store"] = store_direct(db, leases, args, 3.0)
        say(f"  store alone: renew_lease {out['store']['renew_ms']:.2f} ms, record_progress "
            f"{out['store']['progress_ms']:.2f} ms")
        return out


# -- driver --------------------------------------------------------------------------------------


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[str]:
    lines = []
    for kind, res in results.items():
        if "reads" in res:
            r = res["reads"]
            lines += [f"Reads ({kind}: {r['seeded']['runs']} runs, {r['seeded']['points']:,} points; one request at a "
                      f"time, {args.requests} each)", "",
                      "| query | p50 ms | p95 ms | p99 ms | max ms | bytes |", "|---|---:|---:|---:|---:|---:|"]
            for label, q in r["queries"].items():
                lines.append(f"| {label} | {q['p50_ms']:.1f} | {q['p95_ms']:.1f} | {q['p99_ms']:.1f} | "
                             f"{q['max_ms']:.1f} | {q['bytes']:,} |")
            page, chart = r["queries"]["runs page"], r["queries"]["chart 100k"]
            lines += ["", f"- runs page p95 {page['p95_ms']:.1f} ms: {'meets' if page['p95_ms'] <= 100 else 'misses'} "
                      "<= 100 ms",
                      f"- 100,000-point series at max_points={CHART_POINTS} ({r['chart_points']} points, steps "
                      f"{r['chart_ends'][0]}..{r['chart_ends'][1]}) p95 {chart['p95_ms']:.1f} ms: "
                      f"{'meets' if chart['p95_ms'] <= 200 else 'misses'} <= 200 ms", ""]
        if "ingest" in res:
            lines += [f"Renewals beside metric ingest ({kind}, {args.workers} leases, {args.concurrency} renewal "
                      f"lanes, {args.points_per_post} point(s) x {args.metrics_per_point} metrics per post)", "",
                      "| ingest offered posts/s | ingest done/s | ingest p99 ms | renewals/s alone | renewals/s beside "
                      "| ratio | renew p99 ms alone / beside | server CPU alone / beside |",
                      "|---:|---:|---:|---:|---:|---:|---|---|"]
            for rate, row in res["ingest"]["rates"].items():
                lines.append(f"| {rate:.0f} | {row['ingest_done']:.0f} | {row['ingest_p99_ms']:.1f} | "
                             f"{row['alone']:.0f} | {row['with_ingest']:.0f} | {row['ratio']:.2f} | "
                             f"{row['alone_p99_ms']:.1f} / {row['with_ingest_p99_ms']:.1f} | "
                             f"{row['server_cpu_alone']:.2f} / {row['server_cpu_with']:.2f} |")
            direct = res["ingest"]["store"]
            lines += ["", f"Store alone (one thread, no HTTP): renew_lease {direct['renew_ms']:.2f} ms, "
                      f"record_progress {direct['progress_ms']:.2f} ms per post", ""]
            lines += [f"- ingest {rate:.0f} posts/s: renewals x{row['ratio']:.2f}: "
                      f"{'meets' if row['ratio'] >= 0.9 else 'misses'} >= 0.90"
                      for rate, row in res["ingest"]["rates"].items()]
    return lines


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.dashboard_load", description=__doc__.split("\n", 1)[0])
    p.add_argument("--db", default="sqlite", help="comma list of sqlite, postgresql")
    p.add_argument("--sections", default="reads,ingest", help="comma list of reads, ingest")
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--points", type=int, default=1_000_000)
    p.add_argument("--big-series", type=int, default=100_000, help="points of run big's loss series")
    p.add_argument("--running", type=int, default=50, help="runs holding a lease")
    p.add_argument("--requests", type=int, default=200, help="timed requests per read query")
    p.add_argument("--workers", type=int, default=1000, help="leases renewed in the ingest section")
    p.add_argument("--ingest-rates", default="100,1000",
                   type=lambda text: [float(x) for x in text.split(",") if x.strip()], help="progress posts/s")
    p.add_argument("--points-per-post", type=int, default=1)
    p.add_argument("--metrics-per-point", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=32, help="renewal lanes")
    p.add_argument("--duration", type=float, default=20.0, help="seconds measured per phase, over all slices")
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--quiet-wait", type=float, default=0.0,
                   help="before each measured slice, wait up to this long for other processes to quieten")
    p.add_argument("--pg-url", default=PG_URL)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    args.server, args.app_factory = "bench", DEFAULT_FACTORY  # what harness.bench_server reads
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    say(f"machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"load average {loadavg()}")
    say(f"command: python -m bench.dashboard_load {' '.join(argv)}".rstrip())
    sections = {"reads": reads, "ingest": ingest}
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    for s in chosen:
        if s not in sections:
            raise SystemExit(f"--sections: unknown section {s!r}")
    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="relay-dash-") as tmp:
        for kind in [k.strip() for k in args.db.split(",") if k.strip()]:
            results[kind] = {s: sections[s](kind, args, Path(tmp)) for s in chosen}
    say("")
    for line in report(results, args):
        say(line)
    say(f"\n(total {time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
