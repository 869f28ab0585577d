"""Two ``relay serve`` replicas over one PostgreSQL database, and real workers that use them.

- A replica whose clock runs ahead by twice the margin grants nothing early: lease times come
  from the database's clock, not the replica's.
- A worker given both replicas' URLs carries on through the other when its replica is killed,
  in the same epoch: one attempt, the run's final state exact.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from relaytrain.checkpoint import verify
from relaytrain.commander.store import Store
from relaytrain.commander.store.clock import CLOCK_OFFSET_ENV
from tests.support.commander import Commander, wait_until
from tests.support.relay import COUNTER, WorkerProc, counter_final_state, counter_run

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _final_state(client, run_id: str) -> dict:
    path = Path(client.run(run_id).latest_checkpoint.uri.removeprefix("file://"))
    assert verify(path).ok
    return json.loads((path / "state.json").read_text())


def _attempts(db: str, run_id: str) -> list[dict]:
    store = Store(db)
    try:
        return [a for a in store.attempts_table() if a["run_id"] == run_id]
    finally:
        store.close()


class Replicas:
    """Replicas over ``db`` and the workers started against them; all stopped by :meth:`close`."""

    def __init__(self, db: str, tmp_path: Path) -> None:
        self.db, self.tmp_path = db, tmp_path
        self.commanders: list[Commander] = []
        self.workers: list[WorkerProc] = []
        self.token = ""

    def replica(self, **env: str) -> Commander:
        commander = Commander(db=self.db, token="admin", workdir=self.tmp_path, env=env).start()
        self.commanders.append(commander)
        return commander

    def worker(self, name: str, *urls: str) -> WorkerProc:
        if not self.token:
            with self.commanders[0].client() as admin:
                self.token = admin.create_token("workers").token
        worker = WorkerProc(",".join(urls), self.token, name, self.tmp_path / name).start()
        self.workers.append(worker)
        return worker

    def logs(self) -> str:
        return "\n".join(f"--- {w.worker_id}\n{w.log()[-3000:]}" for w in self.workers)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        for commander in self.commanders:
            commander.stop(signal.SIGKILL)


@pytest.fixture
def replicas(pg_url, tmp_path):
    r = Replicas(pg_url, tmp_path)
    yield r
    r.close()


def test_a_replica_whose_clock_is_ahead_grants_no_live_lease(replicas, tmp_path):
    lease = {"ttl_s": 6, "margin_s": 3.5, "grace_s": 1}
    right = replicas.replica()
    ahead = replicas.replica(**{CLOCK_OFFSET_ENV: str(2 * lease["margin_s"])})  # past the whole ttl
    config = counter_run("clocked", tmp_path / "artifacts", max_steps=80, every=10, lease=lease)
    config["trainer"]["command"] = f"{sys.executable} {COUNTER}"  # a shell string
    admin = right.client()
    admin.submit(config)
    holder = replicas.worker("holder", right.url)
    wait_until(lambda: admin.run("clocked").holder == "holder", 60, f"the holder's grant ({replicas.logs()})")
    replicas.worker("poacher", ahead.url)  # polls the replica whose clock is ahead, and sweeps there

    run = wait_until(lambda: (r := admin.run("clocked")).status in ("succeeded", "failed") and r, 120,
                     f"the run to end ({replicas.logs()})")
    assert run.status == "succeeded", replicas.logs()
    attempts = _attempts(replicas.db, "clocked")
    assert [(a["epoch"], a["worker_id"], a["outcome"]) for a in attempts] == [(1, "holder", "succeeded")], \
        replicas.logs()
    assert _final_state(admin, "clocked") == {"step": 80, "state": counter_final_state(80)}
    assert "self-fenced" not in holder.log() and "refused" not in holder.log()
    admin.close()


def test_a_worker_carries_on_through_the_other_replica_when_one_is_killed(replicas, tmp_path):
    first, second = replicas.replica(), replicas.replica()
    admin = second.client()
    admin.submit(counter_run("failover", tmp_path / "artifacts", max_steps=100, every=10))
    worker = replicas.worker("w", first.url, second.url)
    wait_until(lambda: (r := admin.run("failover")).step >= 20 and r.holder, 60, f"step 20 ({replicas.logs()})")
    first.stop(signal.SIGKILL)

    run = wait_until(lambda: (r := admin.run("failover")).status in ("succeeded", "failed") and r, 120,
                     f"the run to end ({replicas.logs()})")
    assert run.status == "succeeded", replicas.logs()
    attempts = _attempts(replicas.db, "failover")
    assert [(a["epoch"], a["worker_id"], a["outcome"]) for a in attempts] == [(1, "w", "succeeded")], replicas.logs()
    assert attempts[0]["step_start"] == 0 and attempts[0]["steps_lost"] == 0
    assert _final_state(admin, "failover") == {"step": 100, "state": counter_final_state(100)}
    log = worker.log()
    assert f"moving to {second.url}" in log, log[-3000:]
    assert "self-fenced" not in log
    admin.close()
