"""Process-tree fencing with real processes: everything a trainer starts — through a shell,
as an argv list, under torchrun, children, a setsid double-forked daemon — dies with its
worker within a second, and the run's next attempt never overlaps any of it."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from pathlib import Path

import pytest

from relaytrain.contract import classify_exit
from relaytrain.worker import fence
from relaytrain.worker.process import TrainerProcess
from tests.support.commander import wait_until
from tests.support.relay import counter_final_state, counter_run, process_alive

TREE = Path(__file__).resolve().parents[1] / "support" / "tree_trainer.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def journal(path: Path) -> list[tuple[str, int, int, float]]:
    """``(role, epoch, pid, time)`` of every complete journal line."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4:
            rows.append((parts[0], int(parts[1]), int(parts[2]), float(parts[3])))
    return rows


def roles(rows, epoch: int) -> set[str]:
    return {role for role, e, _, _ in rows if e == epoch}


TRAINERS = {
    "shell string": lambda: f"{shlex.quote(sys.executable)} {shlex.quote(str(TREE))}",
    "argv list": lambda: [sys.executable, str(TREE)],
    "torchrun shell string": lambda: shlex.join([*TORCHRUN, str(TREE)]),
    "torchrun argv list": lambda: [*TORCHRUN, str(TREE)],
}


@pytest.mark.slow
@pytest.mark.parametrize("how", list(TRAINERS))
def test_kill_9_of_the_worker_kills_the_whole_tree_within_a_second(cluster, tmp_path, how):
    log = tmp_path / "journal.txt"
    expected = {"trainer", "child", "daemon"} | ({"rank1"} if "torchrun" in how else set())
    config = counter_run("tree", cluster.store, max_steps=80, every=10, step_s=0.05,
                         env={"TREE_JOURNAL": str(log), "OMP_NUM_THREADS": "1"})
    config["trainer"]["command"] = TRAINERS[how]()
    cluster.client.submit(config)
    victim = cluster.worker("victim")
    cluster.wait_step("tree", 15, timeout_s=120)
    wait_until(lambda: roles(journal(log), 1) >= expected, 30, f"every process of the tree to write ({how})")

    killed_at = time.time()
    victim.signal(signal.SIGKILL)
    victim.proc.wait(timeout=10)
    first = [row for row in journal(log) if row[1] == 1]
    pids = {pid for _, _, pid, _ in first}
    wait_until(lambda: not any(process_alive(pid) for pid in pids), 10, "the first attempt's processes to die")
    first = [row for row in journal(log) if row[1] == 1]
    last_write = max(t for *_, t in first)
    assert last_write - killed_at < 1.0, f"{how}: a process of the tree wrote {last_write - killed_at:.2f}s after"

    cluster.worker("heir")
    run = cluster.wait_status("tree", ("succeeded",), timeout_s=180)
    rows = journal(log)
    second = [row for row in rows if row[1] == 2]
    assert roles(rows, 2) >= expected
    assert min(t for *_, t in second) > last_write, "the next attempt overlapped the first one's processes"
    assert not any(process_alive(pid) for _, _, pid, _ in second), "the finished trainer left processes behind"
    path = Path(run.latest_checkpoint.uri.removeprefix("file://"))
    assert (path / "state.json").read_text().count(counter_final_state(80)) == 1


def _start(tmp_path: Path, argv: list[str], **env: str) -> TrainerProcess:
    return TrainerProcess(argv, env={**os.environ, "TREE_JOURNAL": str(tmp_path / "journal.txt"), **env},
                          cwd=tmp_path, log_dir=tmp_path / "logs", stop_file=tmp_path / "STOP")


@pytest.mark.parametrize("code", [0, 3, 75, 78])
def test_the_fence_exits_with_the_trainer_code(tmp_path, code):
    trainer = _start(tmp_path, [sys.executable, "-c", f"import sys; sys.exit({code})"])
    assert trainer.wait(30) == code


def test_the_fence_dies_by_the_trainer_signal(tmp_path):
    trainer = _start(tmp_path, ["/bin/sh", "-c", "kill -TERM $$"])
    assert trainer.wait(30) == -signal.SIGTERM


def test_a_trainer_that_cannot_start_is_a_permanent_failure(tmp_path):
    trainer = _start(tmp_path, [str(tmp_path / "no-such-trainer")])
    code = trainer.wait(30)
    assert code == 127
    result = classify_exit(code, trainer.stderr_tail(), stop_requested=False, killed_for=None)
    assert result.failure_class == "permanent" and "no-such-trainer" in result.message


def test_a_daemon_forked_as_the_trainer_exits_never_escapes(tmp_path):
    """The race of a double fork: the trainer forks and exits at once, its child calls setsid,
    forks the daemon and exits. However the three interleave with the fence's last sweep, nothing
    carrying the tree's mark is left once the fence has exited (20 tries: an earlier sweep that
    trusted one /proc scan let about one in four through)."""
    for attempt in range(20):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        trainer = _start(folder, [sys.executable, str(TREE), "--daemon", "daemon"])
        assert trainer.wait(30) == 0
        assert fence.marked(trainer.token) == [], f"try {attempt}: the daemon outlived the fence"


def test_what_a_finished_trainer_leaves_behind_is_killed(tmp_path):
    """The trainer starts a setsid daemon and exits 0: the daemon is killed before the fence exits."""
    journal_path = tmp_path / "journal.txt"
    script = (f"import os, subprocess, sys, time\n"
              f"subprocess.run([sys.executable, {str(TREE)!r}, '--daemon', 'daemon'], check=True)\n"
              f"while not os.path.exists({str(journal_path)!r}) or not os.path.getsize({str(journal_path)!r}):\n"
              f"    time.sleep(0.01)  # the daemon is running: now leave it behind\n")
    trainer = _start(tmp_path, [sys.executable, "-c", script])
    assert trainer.wait(30) == 0
    pids = {pid for _, _, pid, _ in journal(tmp_path / "journal.txt")}
    assert pids, "the daemon never wrote"
    assert not any(process_alive(pid) for pid in pids)


SIGTERM_TREE = """
import glob, os, signal, sys, time
root, folder = os.getpid(), sys.argv[1]
def on_term(*_):
    open(f"{folder}/termed{os.getpid()}", "w").close()
    while os.getpid() == root and len(glob.glob(f"{folder}/termed*")) < 2:
        time.sleep(0.01)  # the parent waits for its daemon to have seen the signal too
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
if os.fork() == 0:
    os.setsid()
open(f"{folder}/ready{os.getpid()}", "w").close()
while True:
    time.sleep(0.01)
"""


def test_sigterm_reaches_every_process_of_the_tree(tmp_path):
    """The graceful stage: SIGTERM reaches a setsid daemon too, and the tree exits 0."""
    trainer = _start(tmp_path, [sys.executable, "-c", SIGTERM_TREE, str(tmp_path)])
    wait_until(lambda: len(list(tmp_path.glob("ready*"))) == 2, 30, "both processes to start")
    trainer.terminate()
    assert trainer.wait(30) == 0
    ready = {p.name.removeprefix("ready") for p in tmp_path.glob("ready*")}
    termed = {p.name.removeprefix("termed") for p in tmp_path.glob("termed*")}
    assert termed == ready


def test_the_kill_stage_ends_the_tree(tmp_path):
    trainer = _start(tmp_path, [sys.executable, "-c", SIGTERM_TREE, str(tmp_path)])
    wait_until(lambda: len(list(tmp_path.glob("ready*"))) == 2, 30, "both processes to start")
    pids = [int(p.name.removeprefix("ready")) for p in tmp_path.glob("ready*")]
    trainer.request_stop("test")
    trainer.advance_stop(0.0)  # the full grace period is over at once: SIGKILL, no SIGTERM
    assert trainer.wait(30) == -signal.SIGKILL
    assert not any(process_alive(pid) for pid in pids) and not list(tmp_path.glob("termed*"))


# Lease jeopardy: the tree is paused (every process SIGSTOPped, those forked meanwhile too) and
# resumed as one, while the fence itself stays awake to kill it.
FORKER_TREE = """
import os, sys, time
folder = sys.argv[1]
if os.fork() == 0:  # a child that forks a new, lasting grandchild every 20 ms
    for _ in range(300):
        if os.fork() == 0:
            while True:
                time.sleep(0.01)
        time.sleep(0.02)
    while True:
        time.sleep(0.01)
open(f"{folder}/ready", "w").close()
while True:
    time.sleep(0.01)
"""

FORKER_TRAINERS = {
    "argv list": lambda folder: [sys.executable, "-c", FORKER_TREE, str(folder)],
    "shell string": lambda folder: ["/bin/sh", "-c", shlex.join([sys.executable, "-c", FORKER_TREE, str(folder)])],
}


def process_state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return "gone"
    return stat[stat.rfind(")") + 2:].split()[0]


def tree_states(trainer: TrainerProcess) -> dict[int, str]:
    return {pid: process_state(pid) for pid in fence.descendants(trainer.pid)}


def all_stopped(trainer: TrainerProcess, at_least: int) -> bool:
    states = tree_states(trainer)
    return len(states) >= at_least and all(s in ("T", "gone") for s in states.values())


@pytest.mark.parametrize("how", list(FORKER_TRAINERS))
def test_pause_stops_the_whole_tree_and_resume_continues_it(tmp_path, how):
    trainer = _start(tmp_path, FORKER_TRAINERS[how](tmp_path))
    wait_until(lambda: (tmp_path / "ready").exists() and len(tree_states(trainer)) >= 5, 30, "the tree to grow")
    trainer.pause()
    wait_until(lambda: all_stopped(trainer, 5), 10, f"every process of the tree to stop: {tree_states(trainer)}")
    paused = set(tree_states(trainer))
    for _ in range(50):  # the forker is stopped too: the tree neither grows nor wakes while paused
        assert all_stopped(trainer, len(paused)) and set(tree_states(trainer)) == paused
    assert process_state(trainer.pid) != "T", "the fence itself must stay awake"
    assert trainer.paused and trainer.poll() is None

    assert trainer.resume() > 0 and not trainer.paused
    wait_until(lambda: not any(s == "T" for s in tree_states(trainer).values())
               and len(tree_states(trainer)) > len(paused), 10, "the tree to run and fork again")

    trainer.pause()
    wait_until(lambda: all_stopped(trainer, len(paused)), 10, "the tree to stop again")
    pids = list(tree_states(trainer))
    trainer.request_stop("a stop while paused")
    trainer.advance_stop(0.0)  # no escalation while paused: the tree stays as it is
    assert trainer.poll() is None and all_stopped(trainer, len(pids))
    trainer.kill()  # a paused tree dies as one
    assert trainer.wait(30) == -signal.SIGKILL
    assert not any(process_alive(pid) for pid in pids)
    assert fence.marked(trainer.token) == []
