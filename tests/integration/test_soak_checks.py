"""The soak's detectors (bench/_soak_checks.py) see what they must: two counter trainers of one run
training at once, two attempts open at once, and a trainer process left alive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from bench._soak_checks import OrphanWatcher, cause, double_grants, journal_path, overlaps, read_journal
from bench.soak import Fault
from relaytrain.worker.fence import FENCE_ENV
from tests.support.commander import wait_until
from tests.support.relay import COUNTER


def counter(root: Path, epoch: int, steps: int) -> subprocess.Popen:
    env = {**os.environ, "RELAY_OUTPUT_DIR": str(root / f"ckpt{epoch}"), "RELAY_MAX_STEPS": str(steps),
           "RELAY_EPOCH": str(epoch), "COUNTER_STEP_S": "0.01", "COUNTER_JOURNAL": str(journal_path(root, "r"))}
    return subprocess.Popen([sys.executable, str(COUNTER)], env=env, stdout=subprocess.DEVNULL)


def test_attempts_one_after_the_other_do_not_overlap_and_side_by_side_do(tmp_path):
    journal_path(tmp_path, "r").parent.mkdir()
    for epoch in (1, 2):
        assert counter(tmp_path, epoch, 20).wait(timeout=60) == 0
    rows = read_journal(tmp_path, "r")
    assert [step for e, _, step, _ in rows if e == 2] == list(range(1, 21))
    assert overlaps(rows) == []

    first = counter(tmp_path, 3, 100_000)  # trains until told to stop
    wait_until(lambda: any(e == 3 for e, *_ in read_journal(tmp_path, "r")), 30, "epoch 3 to train")
    second = counter(tmp_path, 4, 20)
    wait_until(lambda: any(e == 4 for e, *_ in read_journal(tmp_path, "r")), 30, "epoch 4 to train")
    started = min(t for e, _, _, t in read_journal(tmp_path, "r") if e == 4)
    wait_until(lambda: any(e == 3 and t > started for e, _, _, t in read_journal(tmp_path, "r")), 30,
               "epoch 3 to train a step after epoch 4 started")
    first.send_signal(signal.SIGTERM)  # it checkpoints and exits 0, having trained beside epoch 4
    assert (first.wait(timeout=60), second.wait(timeout=60)) == (0, 0)
    found = overlaps(read_journal(tmp_path, "r"))
    assert [sorted(o["epochs"]) for o in found] == [[3, 4]]


def test_double_grants_are_attempts_of_one_run_open_at_once():
    def attempt(run, epoch, granted, ended):
        return {"run_id": run, "epoch": epoch, "granted_at": granted, "ended_at": ended}

    handed_over = [attempt("a", 1, 0, 10), attempt("a", 2, 10, 20), attempt("b", 1, 5, None)]
    assert double_grants(handed_over) == []
    assert double_grants([attempt("a", 1, 0, 10), attempt("a", 2, 9.5, 20)]) == [{"run_id": "a", "epochs": [1, 2]}]
    assert double_grants([attempt("a", 2, 30, 40), attempt("a", 1, 0, None)]) == [{"run_id": "a", "epochs": [1, 2]}]


def test_a_trainer_alive_after_its_attempt_ended_is_an_orphan_and_a_live_one_is_not(tmp_path):
    run_root = tmp_path / "workers" / "w001" / "runs" / "r"
    env = {**os.environ, FENCE_ENV: "t0k3n", "RELAY_RUN_ROOT": str(run_root), "RELAY_RUN_ID": "r", "RELAY_EPOCH": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env=env)
    try:
        ended: set[tuple[str, int]] = set()
        watcher = OrphanWatcher(tmp_path, lambda: ended, lambda worker_id: worker_id == "w001", grace_s=0.2)
        wait_until(lambda: proc.pid in watcher.sample(), 30, "the watcher to see the trainer")
        assert watcher.orphans == {}
        ended.add(("r", 1))  # its attempt ended, and it lives on
        wait_until(lambda: watcher.sample() and watcher.orphans, 10, "the orphan to be found")
        assert watcher.orphans[proc.pid]["why"] == "its attempt ended"
        other = OrphanWatcher(tmp_path / "elsewhere", lambda: ended, lambda _: False, grace_s=0)
        assert other.sample() == [] and other.orphans == {}  # only trainers under the soak's own folder
    finally:
        proc.kill()
        proc.wait()


def test_an_attempt_that_ended_badly_is_charged_to_the_fault_that_ended_it():
    disk = Fault("disk_full", 10, "fill", "w1", until=30)
    restart = Fault("commander_restart", 100, "replica 0")
    kill = Fault("worker_kill", 200, "kill", "w2")
    faults = [disk, restart, kill]

    def ended(worker_id, at):
        return {"worker_id": worker_id, "ended_at": at}

    assert cause(ended("w1", 12), faults, window_s=60) is disk
    assert cause(ended("w1", 110), faults, window_s=60) is restart  # the disk was emptied long before
    assert cause(ended("w2", 120), faults, window_s=60) is restart
    assert cause(ended("w2", 212), faults, window_s=60) is kill  # its lease ran out after the kill
    assert cause(ended("w3", 95), faults, window_s=60) is None  # nothing near it: reported as unattributed
    # the full disk killed w1's worker process at 15: its lease ran out during the restart, charged to the disk
    assert cause(ended("w1", 110), faults, window_s=60, died={"w1": 15}) is disk
    # w3's worker died of the restart's 500s at 105 and its lease ran out long after: the restart
    assert cause(ended("w3", 300), faults, window_s=60, died={"w3": 105}) is restart
