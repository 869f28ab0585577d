"""relaytrain's torchrun launcher (``relaytrain.train.launch``) as real processes, 2 gloo ranks on
the CPU: a stop signal reaches every rank and they save and exit 0 (launcher 0); a rank killed
with ``kill -9`` while the other waits in an all-reduce ends the launch at once with 75 and a
line naming it, leaving no process; a built-in run (worker entry and ``relay train``) whose ranks
both find the run wrong exits 78."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from relaytrain.contract import ExitCode, classify_exit
from relaytrain.worker import fence
from relaytrain.worker.process import TrainerProcess
from tests.support.commander import wait_until
from tests.support.relay import process_alive

pytest.importorskip("torch")

TRAINER = Path(__file__).resolve().parents[1] / "support" / "torchrun_trainer.py"


def contract_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "TORCHELASTIC_"))}
    env.pop("LOCAL_RANK", None)
    env.update({"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "RELAY_RUN_ROOT": str(tmp_path),
                "RELAY_OUTPUT_DIR": str(tmp_path / "checkpoints"), "RELAY_EPOCH": "2",
                "RELAY_PROGRESS_FILE": str(tmp_path / "progress.jsonl"), "RELAY_STOP_FILE": str(tmp_path / "STOP"),
                **extra})
    return env


def start_launcher(tmp_path: Path) -> subprocess.Popen:
    env = contract_env(tmp_path, RELAY_MAX_STEPS="100000", TR_JOURNAL=str(tmp_path / "journal.txt"))
    with open(tmp_path / "err", "wb") as err:
        return subprocess.Popen([sys.executable, str(TRAINER), "--launch", "2"], env=env, stderr=err)


def rows(tmp_path: Path) -> list[list[str]]:
    path = tmp_path / "journal.txt"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def started(tmp_path: Path) -> dict[str, int]:
    """Rank → pid, once both ranks have taken a few steps."""
    wait_until(lambda: sum(r[2] == "step" for r in rows(tmp_path)) >= 10, 120, "both ranks to take steps")
    return {r[0]: int(r[1]) for r in rows(tmp_path) if r[2] == "start"}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_reaches_every_rank_and_the_launcher_exits_0(tmp_path, sig):
    launcher = start_launcher(tmp_path)
    ranks = started(tmp_path)
    launcher.send_signal(sig)
    assert launcher.wait(timeout=60) == 0, (tmp_path / "err").read_text()[-3000:]
    stops = {r[0]: r for r in rows(tmp_path) if r[2] == "stop"}
    assert set(stops) == {"0", "1"} and stops["0"][3] == stops["1"][3], rows(tmp_path)[-4:]
    assert {r[4] for r in stops.values()} == {sig.name}
    step = int(stops["0"][3])
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == f"step_{step:08d}"
    assert not any(process_alive(pid) for pid in ranks.values())
    assert list((tmp_path / "logs" / "attempt_2" / "ranks").rglob("stderr.log")), "the ranks' logs are kept"


@pytest.mark.slow
def test_a_rank_killed_with_sigkill_ends_the_launch_transient_and_leaves_nothing(tmp_path):
    launcher = start_launcher(tmp_path)
    ranks = started(tmp_path)
    os.kill(ranks["1"], signal.SIGKILL)  # rank 0 waits for it in an all-reduce (it does not sleep)
    code = launcher.wait(timeout=60)  # torchrun's teardown: SIGTERM, SIGKILL after TEARDOWN_S
    stderr = (tmp_path / "err").read_text()
    assert code == ExitCode.TEMPFAIL, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("relaytrain launcher: rank 1 of 2 failed (killed by SIGKILL); exiting 75"), last
    result = classify_exit(code, stderr, stop_requested=False, killed_for=None)
    assert (result.outcome, result.failure_class) == ("failed", "transient") and "rank 1 of 2" in result.message
    wait_until(lambda: not any(process_alive(pid) for pid in ranks.values()), 10, "every rank to be gone")


def sft_config(tmp_path: Path) -> dict:
    return {"run_id": "ranks", "kind": "sft", "max_steps": 4, "data": {"path": str(tmp_path / "missing.jsonl")},
            "trainer": {"batch_size": 4, "distributed": {"strategy": "ddp", "nproc_per_node": 2}}}


ENTRIES = {
    "worker entry": lambda tmp_path: [sys.executable, "-m", "relaytrain.train.run", str(tmp_path / "run.json")],
    "relay train": lambda tmp_path: [sys.executable, "-m", "relaytrain.train", "sft", "--max-steps", "4",
                                     "--output-dir", str(tmp_path / "out"), "--nproc-per-node", "2",
                                     "--dataset", str(tmp_path / "missing.jsonl")],
}


@pytest.mark.slow
@pytest.mark.parametrize("entry", list(ENTRIES))
def test_a_built_in_run_whose_ranks_find_it_wrong_exits_78(tmp_path, entry):
    (tmp_path / "run.json").write_text(json.dumps(sft_config(tmp_path)))
    done = subprocess.run(ENTRIES[entry](tmp_path), env=contract_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == ExitCode.CONFIG, done.stderr[-3000:]
    assert "launching 2 ranks" in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "failed (exit 78 (EX_CONFIG)); exiting 78: " in last and "missing.jsonl" in last, last
    result = classify_exit(done.returncode, done.stderr, stop_requested=False, killed_for=None)
    assert result.failure_class == "permanent"


def tree_states(trainer: TrainerProcess) -> dict[int, str]:
    states = {}
    for pid in fence.descendants(trainer.pid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        states[pid] = stat[stat.rfind(")") + 2:].split()[0]
    return states


@pytest.mark.slow
def test_the_fence_pauses_the_launcher_and_its_ranks_as_one_and_the_stop_file_stops_them(tmp_path):
    """The worker's supervision of the tree: lease jeopardy's pause stops the launcher and every
    rank, resume continues them, and the stop file (the worker's first way to ask) ends every rank
    at the same step with exit 0."""
    env = contract_env(tmp_path, RELAY_MAX_STEPS="100000", TR_JOURNAL=str(tmp_path / "journal.txt"))
    trainer = TrainerProcess([sys.executable, str(TRAINER), "--launch", "2"], env=env, cwd=tmp_path,
                             log_dir=tmp_path / "logs" / "attempt_2", stop_file=tmp_path / "STOP")
    ranks = started(tmp_path)
    assert set(ranks.values()) < set(tree_states(trainer)), "the ranks are in the fence's tree"
    trainer.pause()
    wait_until(lambda: all(s == "T" for s in tree_states(trainer).values()), 10,
               f"every process of the tree to stop: {tree_states(trainer)}")
    steps = len(rows(tmp_path))
    assert trainer.resume() > 0
    wait_until(lambda: len(rows(tmp_path)) > steps + 4, 60, "the ranks to train again")
    trainer.request_stop("cancelled")
    assert trainer.wait(60) == 0, trainer.stderr_tail()
    stops = {r[0]: r for r in rows(tmp_path) if r[2] == "stop"}
    assert set(stops) == {"0", "1"} and stops["0"][3] == stops["1"][3]
    assert {r[4] for r in stops.values()} == {"stop_file"}
    assert not any(process_alive(pid) for pid in ranks.values())
