"""Commander load benchmark, renewals: leases renewed through the HTTP API, against the no-op
ceiling (the package docstring describes the server, databases, client and CPU columns).

    python -m bench.commander_load.renewals --db sqlite --workers 1000 --duration 5

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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.commander_load.harness import (
    DISTURBED,
    NAN,
    BenchCommander,
    Section,
    bench_server,
    bounded_map,
    closed_loops,
    cpu_cells,
    database,
    fmt_rate,
    loadavg,
    main,
    make_client,
    make_lanes,
    paced_loop,
    post,
    run_doc,
    say,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", default="1000,5000", type=lambda text: [int(x) for x in text.split(",") if x.strip()],
                   help="comma list of worker counts")
    p.add_argument("--duration", type=float, default=10.0, help="measured window, seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before each window")
    p.add_argument("--slices", type=int, default=5,
                   help="the ceiling and the max renewals alternate in this many slices of the window")
    p.add_argument("--rate", type=float, default=2000.0, help="offered renewals/s of the paced phase")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight (one connection each)")
    p.add_argument("--setup-concurrency", type=int, default=32)
    p.add_argument("--store-seconds", type=float, default=3.0, help="direct Store.renew_lease phase (0: skip)")


@dataclass
class Lease:
    worker_id: str
    run_id: str
    epoch: int


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


async def renewal_bench(server: BenchCommander, token: str, args: argparse.Namespace, db: str) -> dict[str, Any]:
    out: dict[str, Any] = {"by_workers": {}}
    admin_token = server.token
    timing = {"warmup": args.warmup, "duration": args.duration, "server_pid": server.pid, "quiet_s": args.quiet_wait}
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


def run(kind: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The renewal benchmark on a fresh database of ``kind``."""
    with database(kind, tmp, args) as db, bench_server(db, tmp, args) as server:
        say(f"[{kind}] renewals: server pid {server.pid} on {server.url}; load average {loadavg()}")
        return asyncio.run(renewal_bench(server, server.worker_token(), args, db))


def tables(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """The renewal tables of ``{kind: result}``."""
    ceiling = "no-op" if args.server == "bench" else "health"
    lines = [
        "Renewals (CPU columns: cores busy over the window; * = other processes used more than "
        f"{DISTURBED} cores, the figure is disturbed)",
        "",
        "| db | workers | phase | offered/s | done/s | p50 ms | p99 ms | non-200 "
        "| CPU server | CPU client | CPU postgres | CPU other |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, r in results.items():
        rows = []
        for n, by in r["by_workers"].items():
            rows.append((n, f"ceiling ({ceiling})", "closed", by["ceiling"]))
            rows.append((n, "renew max", "closed", by["max"]))
            rows.append((n, f"renew paced (ttl {by['paced']['ttl_s']:.2f} s)", f"{args.rate:.0f}", by["paced"]))
        for w, phase, offered, s in rows:
            lines.append(f"| {kind} | {w} | {phase} | {offered} | {s['rate']:.0f} | {s['p50_ms']:.2f} | "
                         f"{s['p99_ms']:.2f} | {sum(s['errors'].values())} | {cpu_cells(s)} |")
    lines += [
        "",
        "| db | workers | max / ceiling | ttl at max (3N/rate) | server CPU us/renew | client CPU us/req "
        "| in-app ms/renew (incl. queueing) | paced send lag p99 ms | Store.renew_lease alone /s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, r in results.items():
        store = r.get("store", {}).get("rate", NAN)
        for n, by in r["by_workers"].items():
            mx = by["max"]
            lines.append(f"| {kind} | {n} | {mx['rate'] / by['ceiling']['rate']:.2f} | {mx['ttl_at_max_s']:.2f} s | "
                         f"{mx.get('server_us', NAN):.0f} | {mx.get('client_us', NAN):.0f} | "
                         f"{mx.get('server_ms', NAN):.1f} | {by['paced'].get('lag_p99_ms', NAN):.0f} | {store:.0f} |")
    return lines


def verdicts(kind: str, r: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Per worker count: the paced target and max / ceiling, met or missed."""
    lines = []
    for n, by in r["by_workers"].items():
        p = by["paced"]
        ok = p["rate"] >= 0.99 * args.rate and p["p99_ms"] <= 50
        ratio = by["max"]["rate"] / by["ceiling"]["rate"]
        lines.append(f"- {kind}, {n} workers: paced {p['rate']:.0f}/s at p99 {p['p99_ms']:.1f} ms: "
                     f"{'meets' if ok else 'misses'} >= {args.rate:.0f}/s with p99 <= 50 ms; "
                     f"max/ceiling {ratio:.2f}: {'meets' if ratio >= 0.5 else 'misses'} >= 0.5")
    return lines


SECTION = Section("renew", add_arguments, run, tables, verdicts)

if __name__ == "__main__":
    raise SystemExit(main("bench.commander_load.renewals", __doc__, [SECTION]))
