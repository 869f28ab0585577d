"""Lease safety under contention: 16 claimer processes hammer real commanders over HTTP.

Afterwards, from the attempts table: per run, epochs go 1, 2, 3, … with no gap, no two
attempts' held intervals overlap, and every grant was answered to exactly one claimer.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relaytrain.commander.store import Store
from tests.support.claimer import lease_violations
from tests.support.commander import Commander, wait_until

CLAIMERS = 16
DURATION_S = 10
"""The claimers hammer for at least this long ..."""
MIN_GRANTS = 100
"""... and until this many grants were made (a slow machine takes longer), ..."""
MAX_S = 90
"""... but no longer than this."""
RUNS = 6


def _run_config(i: int) -> dict:
    return {
        "run_id": f"contended-{i}",
        "kind": "command",
        "max_steps": 10,
        "priority": i % 3,
        "trainer": {"command": "true"},
        "lease": {"ttl_s": 3, "margin_s": 1.5, "grace_s": 1},
        "retry": {"max_retries": 1000, "backoff_base_s": 0.01, "backoff_cap_s": 0.05},
    }


def granted(admin) -> int:
    """Grants so far: a run's epoch counts the grants it has had."""
    return sum(run.epoch for run in admin.runs(limit=RUNS).items)


def hammer(db: str, tmp_path: Path, replicas: int) -> None:
    commanders = [Commander(db=db, token="admin", workdir=tmp_path).start() for _ in range(replicas)]
    try:
        with commanders[0].client() as admin:
            worker_tokens = [admin.create_token(f"w{i}").token for i in range(CLAIMERS)]
            for i in range(RUNS):
                admin.submit(_run_config(i))
        procs = []
        stop = tmp_path / "STOP"
        for i in range(CLAIMERS):
            target = commanders[i % replicas]
            out = tmp_path / f"claimer-{i}.jsonl"
            cmd = [sys.executable, "-m", "tests.support.claimer", target.url, worker_tokens[i], f"w{i}",
                   str(MAX_S), str(i), str(out), str(stop)]
            procs.append(subprocess.Popen(cmd, stderr=subprocess.PIPE))
        started = time.monotonic()
        with commanders[0].client() as admin:
            wait_until(lambda: time.monotonic() - started >= DURATION_S and granted(admin) >= MIN_GRANTS,
                       MAX_S, f"{MIN_GRANTS} grants", interval_s=0.5)
        stop.touch()
        for proc in procs:
            _, stderr = proc.communicate(timeout=MAX_S + 90)
            assert proc.returncode == 0, stderr.decode()[-2000:]
    finally:
        for c in commanders:
            c.stop()

    records = [json.loads(line) for i in range(CLAIMERS) for line in (tmp_path / f"claimer-{i}.jsonl").open()]
    store = Store(db)
    attempts = store.attempts_table()
    store.close()

    grants = [(r["run_id"], r["epoch"]) for r in records if r["event"] == "grant"]
    assert grants, "no claimer was ever granted a run"
    violations = lease_violations(grants, attempts)
    assert not violations, "\n".join(violations)

    events = collections.Counter(r["event"] for r in records)
    assert events["stale_write_accepted"] == 0
    assert events["stale_write_refused"] > 0
    outcomes = collections.Counter(a["outcome"] for a in attempts)
    assert outcomes["lost"] > 0 and outcomes["preempted"] > 0 and outcomes["failed"] > 0, outcomes
    assert len(attempts) >= MIN_GRANTS, f"only {len(attempts)} grants: the test did not contend"


@pytest.mark.slow
def test_no_double_grant_under_contention(db_url, tmp_path):
    hammer(db_url, tmp_path, replicas=1)


@pytest.mark.slow
@pytest.mark.postgres
def test_no_double_grant_across_two_replicas(pg_url, tmp_path):
    hammer(pg_url, tmp_path, replicas=2)
