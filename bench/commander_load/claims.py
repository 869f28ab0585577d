"""Commander load benchmark, claims: a queue drained through the HTTP API by concurrent
claimers, every grant checked for a double (the package docstring describes the server,
databases, client and CPU columns).

    python -m bench.commander_load.claims --db sqlite --queue 2000 --claim-seconds 10

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
Double grants: every break of lease safety that ``tests.support.claimer.lease_violations`` (the
lease-safety tests' audit) finds in the grants the API answered and the attempts table read
after the server stops: a (run_id, epoch) answered to two claimers, grants and attempts that
disagree, a run whose epochs are not 1, 2, 3, …, or a run granted again while an earlier
attempt still held it (nothing is released here: any second grant of a run is one). The first
20 are kept as "violations".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from bench.commander_load.harness import (
    BenchCommander,
    CpuSample,
    Section,
    bench_server,
    check,
    cpu_cells,
    database,
    main,
    make_lanes,
    pct,
    run_doc,
    say,
    wait_quiet,
)
from tests.support.claimer import lease_violations


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queue", type=int, default=10_000, help="runs queued for the claim benchmark (0: skip it)")
    p.add_argument("--claimers", type=int, default=32)
    p.add_argument("--claim-seconds", type=float, default=20.0,
                   help="claimers stop when the queue is drained or after this long (claims/s over what ran)")


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


def recorded_attempts(db: str) -> list[dict[str, Any]]:
    """The attempts table, read after the server stopped."""
    from relaytrain.commander.store import Store

    store = Store(db)
    try:
        return store.attempts_table()
    finally:
        store.close()


async def claim_bench(server: BenchCommander, token: str,
                      args: argparse.Namespace) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """The claim figures, and every grant answered: (run_id, epoch)."""
    total = args.queue
    grants: list[tuple[str, int, str]] = []
    lat: list[float] = []
    empty = 0
    async with make_lanes(server.url, token, args.claimers, args.shared_pool) as lanes:
        workers = [f"c{i:03d}" for i in range(args.claimers)]
        for w, client in zip(workers, lanes, strict=True):
            await check(await client.post("/api/v1/workers/register", json={"worker_id": w}), "register")
        errors: dict[str, int] = {}
        await wait_quiet(server.pid, args.quiet_wait)
        deadline = time.perf_counter() + args.claim_seconds
        cpu0 = CpuSample.take(server.pid)
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
        cpu = cpu0.until(CpuSample.take(server.pid))
    lat.sort()
    return {
        "queued": total,
        "granted": len(grants),
        "drained": len(grants) >= total,
        "distinct_runs": len({run_id for run_id, _, _ in grants}),
        "wall_s": wall,
        "rate": len(grants) / wall if wall else float("nan"),
        "p50_ms": pct(lat, 0.5) * 1e3,
        "p99_ms": pct(lat, 0.99) * 1e3,
        "empty_answers": empty,
        "errors": errors,
        **cpu,
    }, [(run_id, epoch) for run_id, epoch, _ in grants]


def run(kind: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any] | None:
    """The claim benchmark on a fresh database of ``kind`` holding ``--queue`` runs (None if 0)."""
    if args.queue <= 0:
        return None
    with database(kind, tmp, args) as db:
        t = time.perf_counter()
        seed_queue(db, args.queue)
        say(f"[{kind}] claims: {args.queue} runs queued in {time.perf_counter() - t:.1f} s")
        with bench_server(db, tmp, args) as server:
            claims, grants = asyncio.run(claim_bench(server, server.worker_token(), args))
        attempts = recorded_attempts(db)
    violations = lease_violations(grants, attempts)  # the lease-safety tests' audit
    claims["db_runs_with_attempts"] = len({a["run_id"] for a in attempts})
    claims["double_grants"] = len(violations)
    claims["violations"] = violations[:20]
    say(f"  {claims['granted']}/{claims['queued']} granted in {claims['wall_s']:.1f} s: "
        f"{claims['rate']:.0f} claims/s, p50 {claims['p50_ms']:.1f} ms, p99 {claims['p99_ms']:.1f} ms, "
        f"double grants {claims['double_grants']}, empty answers {claims['empty_answers']}, "
        f"runs with an attempt in the DB {claims['db_runs_with_attempts']}")
    return claims


def tables(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """The claims table of ``{kind: result}``."""
    lines = [
        "| db | queued | claimers | granted (in s) | claims/s | p50 ms | p99 ms | double grants | empty answers "
        "| CPU server | CPU client | CPU postgres | CPU other |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, c in results.items():
        lines.append(f"| {kind} | {c['queued']} | {args.claimers} | {c['granted']} ({c['wall_s']:.0f} s) | "
                     f"{c['rate']:.0f} | {c['p50_ms']:.1f} | {c['p99_ms']:.1f} | {c['double_grants']} | "
                     f"{c['empty_answers']} | {cpu_cells(c)} |")
    return lines


def verdicts(kind: str, c: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Double grants: none, or the target is missed (and the first few are named)."""
    dg = c["double_grants"]
    return [f"- {kind}: {dg} double grants in {c['granted']} claims: {'meets' if dg == 0 else 'MISSES'} 0",
            *(f"  - {v}" for v in c["violations"][:5])]


SECTION = Section("claims", add_arguments, run, tables, verdicts)

if __name__ == "__main__":
    raise SystemExit(main("bench.commander_load.claims", __doc__, [SECTION]))
