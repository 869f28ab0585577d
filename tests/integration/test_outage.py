"""Lease jeopardy with real processes (DESIGN §4, docs/commander.md): a commander that is killed
and restarted costs its runs nothing (their trainers pause meanwhile and resume in the same
epoch), while a worker cut off from a commander that stays up has its paused trainer killed when
it is refused on reconnect."""

from __future__ import annotations

import re
import shlex
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from relaytrain.worker import fence
from tests.integration.test_relay import final_state
from tests.support.commander import wait_until
from tests.support.relay import Proxy, WorkerProc, counter_final_state, counter_run, process_alive

pytestmark = pytest.mark.slow

TTL_S = 3  # counter_run's lease.ttl_s


def stopped(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True  # gone: it does no work either
    return stat[stat.rfind(")") + 2:].split()[0] == "T"


def paused_tree(fence_pid: int) -> list[int] | None:
    """The processes of the tree under ``fence_pid`` if every one is stopped (and the fence is not)."""
    tree = fence.descendants(fence_pid)
    if tree and all(stopped(pid) for pid in tree) and not stopped(fence_pid):
        return tree
    return None


def test_a_commander_outage_costs_no_steps_and_no_epoch(commander, tmp_path):
    """Killed (SIGKILL) for 3 × ttl and restarted on the same database: both runs, one given as an
    argv list and one as a shell string, go on from where they stopped in their first epoch."""
    client = commander.client()
    token = client.create_token("workers").token
    store = tmp_path / "artifacts"
    configs = {run_id: counter_run(run_id, store, max_steps=150, every=20) for run_id in ("argv", "shell")}
    configs["shell"]["trainer"]["command"] = shlex.join(configs["shell"]["trainer"]["command"])
    for config in configs.values():
        client.submit(config)
    workers = [WorkerProc(commander.url, token, f"w{i}", tmp_path / f"w{i}").start() for i in range(2)]
    try:
        wait_until(lambda: all((r := client.run(run_id)).step >= 30 and r.holder for run_id in configs), 90,
                   "both runs to train")
        fences = {run_id: w.trainer_pids(run_id) for run_id in configs for w in workers if w.trainer_pids(run_id)}
        commander.stop(signal.SIGKILL)
        down_at = time.monotonic()
        for run_id, (fence_pid,) in fences.items():
            wait_until(lambda pid=fence_pid: paused_tree(pid), 3 * TTL_S, f"the trainer tree of {run_id} to pause")
        time.sleep(max(0.0, down_at + 3 * TTL_S - time.monotonic()))  # the outage itself lasts 3 × ttl
        commander.start()
        for run_id in configs:
            run = wait_until(lambda r=run_id: (x := client.run(r)).status in ("succeeded", "failed") and x, 120,
                             f"{run_id} to finish: " + "\n".join(w.log()[-3000:] for w in workers))
            assert run.status == "succeeded"
            (attempt,) = run.attempts
            assert (attempt.epoch, attempt.outcome, attempt.steps_lost) == (1, "succeeded", 0)
            assert final_state(SimpleNamespace(run=client.run), run_id) == {"step": 150,
                                                                            "state": counter_final_state(150)}
            (extended,) = [e for e in client.events(run_id).items if e.kind == "lease_extended"]
            assert extended.data["extended_s"] >= 3 * TTL_S
        logs = "".join(w.log() for w in workers)
        assert logs.count("paused in lease jeopardy") == 2 and logs.count("the trainer resumes") == 2
    finally:
        for w in workers:
            w.stop()
        client.close()


def test_a_worker_partitioned_past_its_lease_kills_its_paused_tree_when_refused(cluster):
    proxy = Proxy(cluster.commander.port)
    try:
        cluster.client.submit(counter_run("cut", cluster.store, max_steps=120, every=10))
        isolated = cluster.worker("isolated", proxy.url)
        cluster.wait_step("cut", 15)
        (fence_pid,) = isolated.trainer_pids("cut")
        proxy.cut()
        tree = wait_until(lambda: paused_tree(fence_pid), 3 * TTL_S, "the trainer tree to pause")
        # The commander is up: the lease expires there and is not extended.
        wait_until(lambda: cluster.run("cut").status == "queued", 30, "the lease to expire at the commander")
        assert all(stopped(pid) for pid in tree), "a process of the tree ran during the partition"
        proxy.restore()
        wait_until(lambda: not any(process_alive(pid) for pid in tree), 30, "the refused worker to kill its tree")
        # Refused (409) by whichever call landed first: the renewal, or a commit retried since the cut.
        assert re.search(r"stopping cut \(epoch 1\): .*refused", isolated.log()), isolated.log()[-3000:]
        run = cluster.wait_status("cut", ("succeeded", "failed"), timeout_s=120)
        assert run.status == "succeeded", cluster.logs()
        first = run.attempts[0]
        assert (first.epoch, first.outcome) == (1, "lost")
        assert [e for e in cluster.client.events("cut").items if e.kind == "lease_extended"] == []
        assert final_state(cluster, "cut") == {"step": 120, "state": counter_final_state(120)}
    finally:
        proxy.close()


def test_a_tree_paused_past_jeopardy_s_is_killed_and_the_run_goes_on_elsewhere(cluster):
    """The commander stays down longer than ``lease.jeopardy_s``: the paused tree is killed while it
    is still down (a self-fence), and once it is back the run resumes in a new epoch, exact."""
    config = counter_run("long", cluster.store, max_steps=100, every=10)
    config["lease"]["jeopardy_s"] = 2
    cluster.client.submit(config)
    holder = cluster.worker("holder")
    cluster.wait_step("long", 15)
    (fence_pid,) = holder.trainer_pids("long")
    cluster.commander.stop(signal.SIGKILL)
    try:
        tree = wait_until(lambda: paused_tree(fence_pid), 3 * TTL_S, "the trainer tree to pause")
        wait_until(lambda: not any(process_alive(pid) for pid in [fence_pid, *tree]), 30,
                   "the tree to be killed after lease.jeopardy_s")
        assert "stayed unreachable for 2s in lease jeopardy" in holder.log()
    finally:
        cluster.commander.start()
    run = cluster.wait_status("long", ("succeeded", "failed"), timeout_s=120)
    assert run.status == "succeeded", cluster.logs()
    assert [a.epoch for a in run.attempts] == [1, 2] and run.attempts[1].step_start >= 10
    assert final_state(cluster, "long") == {"step": 100, "state": counter_final_state(100)}
