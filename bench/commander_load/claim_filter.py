"""What the anti-affinity filter (``leases.NOT_AVOIDING``, issue 13 item 5) costs the claim: the
claim's first page (the hot statement: every claim runs it) with and without the filter, on the
same fresh database, interleaved so that load from other processes falls on both alike.

    python -m bench.commander_load.claim_filter --db sqlite,postgresql --queue 10000 --rounds 1000

``--queue`` runs are queued (as claims.py seeds them: one through ``Store.submit_run``, the rest
copies of its row); every tenth avoids the claiming worker (``avoid_worker`` = it,
``avoid_until`` in the future), the worst case for a filter that then skips rows. The tables
are analyzed. For each statement the query plan is printed (PostgreSQL ``EXPLAIN ANALYZE``,
SQLite ``EXPLAIN QUERY PLAN``), then ``--rounds`` executions of each, alternating, are timed in
this process (client round trip included): median and 90th percentile, in µs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from relaytrain.commander.store import Store, leases
from relaytrain.commander.store.schema import runs
from relaytrain.config import parse_run_config
from tests.support.commander import PG_URL, fresh_database

WORKER = "w-claiming"


def seed(store: Store, queue: int) -> None:
    store.submit_run(parse_run_config({"run_id": "r0", "kind": "command", "max_steps": 10,
                                       "trainer": {"command": "true"}}), now=1)
    with store.engine.begin() as conn:
        first = dict(conn.execute(sa.select(runs)).mappings().first())
        rows = []
        for i in range(1, queue):
            row = {**first, "run_id": f"r{i}", "created_at": 1 + i * 1e-6}
            if i % 10 == 0:
                row.update(avoid_worker=WORKER, avoid_until=1e12)
            rows.append(row)
        conn.execute(runs.insert(), rows)
        conn.execute(sa.text("ANALYZE runs" if conn.dialect.name == "postgresql" else "ANALYZE"))


def statements() -> dict[str, sa.Select]:
    without = (
        sa.select(runs.c.run_id, runs.c.labels, runs.c.priority, runs.c.created_at)
        .where(*leases.CLAIMABLE_NOW, runs.c.gpus <= sa.bindparam("gpus"))
        .order_by(runs.c.priority.desc(), runs.c.created_at, runs.c.run_id)
        .limit(leases.CLAIM_BATCH)
    )
    return {"without the filter": without, "with NOT_AVOIDING": leases._CLAIM[False].first_page}


def measure(kind: str, queue: int, rounds: int) -> None:
    params = {"now": 100.0, "gpus": 0, "worker_id": WORKER}
    with tempfile.TemporaryDirectory() as tmp, fresh_database(kind, Path(tmp), PG_URL) as url:
        store = Store(url)
        store.upgrade()
        seed(store, queue)
        with store.engine.connect() as conn:
            explain = "EXPLAIN ANALYZE " if kind == "postgresql" else "EXPLAIN QUERY PLAN "
            for name, stmt in statements().items():
                sql = str(stmt.params(**params).compile(conn.engine, compile_kwargs={"literal_binds": True}))
                plan = conn.execute(sa.text(explain + sql)).all()
                print(f"[{kind}] {name}:\n    " + "\n    ".join(" ".join(map(str, r)) for r in plan))
            times: dict[str, list[float]] = {name: [] for name in statements()}
            for _ in range(rounds):
                for name, stmt in statements().items():
                    started = time.perf_counter()
                    got = conn.execute(stmt, params).all()
                    times[name].append(time.perf_counter() - started)
                    assert len(got) == leases.CLAIM_BATCH
            for name, taken in times.items():
                print(f"[{kind}] {name}: median {statistics.median(taken) * 1e6:.0f} µs, "
                      f"p90 {statistics.quantiles(taken, n=10)[-1] * 1e6:.0f} µs over {rounds}")
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--queue", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=1000)
    args = parser.parse_args()
    for kind in args.db.split(","):
        measure(kind, args.queue, args.rounds)


if __name__ == "__main__":
    main()
