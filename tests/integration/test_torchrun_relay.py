"""An external trainer under torchrun, through a real commander and worker (gloo, 2 ranks on
the CPU): the contract for ranks (only rank 0 reports; every rank stops when asked) and the
worker's supervision of the whole tree (a rank killed with ``kill -9`` fails the attempt as
transient, promptly, and leaves no process behind; the run is retried)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
from pathlib import Path

import pytest

from tests.support.commander import wait_until
from tests.support.relay import process_alive, process_tree

pytest.importorskip("torch")

TRAINER = Path(__file__).resolve().parents[1] / "support" / "torchrun_trainer.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(TRAINER)]
COMMANDS = {"argv list": TORCHRUN, "shell string": shlex.join(TORCHRUN)}


def torchrun_run(run_id: str, store: Path, journal: Path, *, max_steps: int, command=TORCHRUN, **extra) -> dict:
    config = {
        "run_id": run_id,
        "kind": "command",
        "max_steps": max_steps,
        "checkpoint": {"every_steps": 10, "keep_last": 100},
        "lease": {"ttl_s": 20, "margin_s": 10, "grace_s": 8},
        "retry": {"max_retries": 3, "backoff_base_s": 0.2, "backoff_cap_s": 1},
        "store": str(store),
        "trainer": {"command": command, "env": {"TR_JOURNAL": str(journal), "TR_STEP_S": "0.05"}},
    }
    config.update(extra)
    return config


def journal_rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def progress_steps(worker, run_id: str, epoch: int) -> list[int]:
    path = worker.workdir / "runs" / run_id / "progress" / f"attempt_{epoch}.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if '"event"' not in line]


@pytest.mark.slow
@pytest.mark.parametrize("how", list(COMMANDS))
def test_a_torchrun_trainer_reports_once_per_step_from_rank_0(cluster, tmp_path, how):
    journal = tmp_path / "journal.txt"
    cluster.client.submit(torchrun_run("ranks", cluster.store, journal, max_steps=30, command=COMMANDS[how]))
    worker = cluster.worker("w")
    run = cluster.wait_status("ranks", ("succeeded", "failed"), timeout_s=180)
    assert run.status == "succeeded", cluster.logs()
    assert progress_steps(worker, "ranks", 1) == list(range(1, 31)), "a step reported twice, or by rank 1"
    points = cluster.client.metrics("ranks", ["total", "rank"]).items
    assert [p.step for p in points if p.name == "total"] == list(range(1, 31))
    assert {p.value for p in points if p.name == "rank"} == {0.0}
    assert [p.value for p in points if p.name == "total"][-1] == 3.0 * 30  # (1 + 2) every step, none twice
    rows = journal_rows(journal)
    assert {(r[0], r[2]) for r in rows if r[2] == "done"} == {("0", "done"), ("1", "done")}


@pytest.mark.slow
def test_cancel_stops_every_rank(cluster, tmp_path):
    journal = tmp_path / "journal.txt"
    cluster.client.submit(torchrun_run("halt", cluster.store, journal, max_steps=100_000))
    worker = cluster.worker("w")
    cluster.wait_step("halt", 5, timeout_s=120)
    pids = process_tree(worker.trainer_pids("halt")[0])
    cluster.client.cancel("halt")
    run = cluster.wait_status("halt", ("cancelled",), timeout_s=60)
    assert run.attempts[0].outcome == "cancelled", (run.attempts[0], cluster.logs())
    stops = {r[0]: r for r in journal_rows(journal) if r[2] == "stop"}
    assert set(stops) == {"0", "1"}, journal.read_text()[-2000:]
    assert stops["0"][3] == stops["1"][3], "the ranks stopped at different steps"
    assert stops["0"][4] in ("stop_file", "SIGTERM"), stops
    wait_until(lambda: not any(process_alive(pid) for pid in pids), 10, "the tree to exit")


@pytest.mark.slow
def test_a_rank_killed_with_sigkill_fails_the_attempt_transient_and_the_run_is_retried(cluster, tmp_path):
    journal = tmp_path / "journal.txt"
    cluster.client.submit(torchrun_run("crash", cluster.store, journal, max_steps=400))
    worker = cluster.worker("w")
    cluster.wait_step("crash", 5, timeout_s=120)
    first = process_tree(worker.trainer_pids("crash")[0])  # the fence, torchrun, its ranks
    rank1 = next(int(r[1]) for r in journal_rows(journal) if r[0] == "1" and r[2] == "start")
    assert rank1 in first
    # Rank 0 does not sleep between steps: it spends its time waiting for rank 1 in the all-reduce.
    os.kill(rank1, signal.SIGKILL)
    wait_until(lambda: (a := cluster.run("crash").attempts) and a[0].outcome is not None, 60,
               f"the attempt to end ({cluster.logs()})")
    attempt = cluster.run("crash").attempts[0]
    assert attempt.outcome == "failed" and attempt.failure_class == "transient", attempt
    wait_until(lambda: not any(process_alive(pid) for pid in first), 10, "every process of the first tree to end")
    run = cluster.wait_status("crash", ("succeeded", "failed"), timeout_s=240)
    assert run.status == "succeeded", cluster.logs()
    assert [a.epoch for a in run.attempts] == [1, 2]
