"""The soak bench (bench/soak.py) in small: a private PostgreSQL, two replicas and three workers
under every fault at a high rate for 45 s, then its checks; and Ctrl-C in the middle leaves
nothing behind (no process, no mount, no PostgreSQL folder)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench._soak_checks import trainer_processes
from tests.support.commander import wait_until
from tests.support.requires import require_program

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SMALL = ["--in-flight", "3", "--min-steps", "60", "--max-steps", "100", "--ttl-s", "6", "--warmup-s", "3"]


def soak_command(out: Path, *extra: str) -> list[str]:
    require_program("initdb", "apt-get install postgresql-15", path=str(PG_BIN / "initdb"))
    return [sys.executable, "-m", "bench.soak", "--out", str(out), *SMALL, *extra]


def leftovers(root: str, pg_folder: str) -> list[str]:
    """Processes, mounts and folders of a finished soak that are still there."""
    found = [f"mount {line.split()[1]}" for line in Path("/proc/mounts").read_text().splitlines()
             if line.split()[1].startswith(root)]
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (root in cmdline or pg_folder in cmdline) and int(name) != os.getpid():
            found.append(f"process {name}: {cmdline[:200]}")
    found += [f"trainer {pid}" for pid in trainer_processes(Path(root))]
    found += [f"folder {p}" for p in (root, pg_folder) if Path(p).exists()]
    return found


def run_soak(command: list[str], log: Path, timeout_s: float) -> int:
    """Run the soak; past ``timeout_s`` interrupt it as Ctrl-C would (so it still cleans up) and fail."""
    with open(log, "wb") as handle:
        soak = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return soak.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        soak.send_signal(signal.SIGINT)
        soak.wait(timeout=90)
        pytest.fail(f"the soak ran past {timeout_s}s: {log.read_text()[-3000:]}")
    finally:
        if soak.poll() is None:
            soak.kill()
            soak.wait()


@pytest.mark.timeout(480)
def test_a_short_soak_injects_every_fault_and_every_run_stays_exact(tmp_path):
    out, log = tmp_path / "out", tmp_path / "soak.log"
    code = run_soak(soak_command(out, "--minutes", "0.75", "--fault-every-s", "4", "--seed", "7", "--drain-s", "120"),
                    log, timeout_s=360)
    assert (out / "soak.json").exists(), log.read_text()[-5000:]
    report = json.loads((out / "soak.json").read_text())
    assert code == 0, (out / "soak.txt").read_text()
    checks = report["checks"]
    assert checks["runs"] >= 3 and checks["final_state_exact"] == checks["runs"]
    assert checks["overlapping_intervals"] == checks["double_grants"] == checks["orphans"] == 0
    assert report["orphan_scans"] > 10
    expected = {"worker_kill", "worker_term", "commander_restart", "postgres_restart", "disk_full"}
    if any("disk_full left out" in note for note in report["notes"]):  # not root: no tmpfs
        expected.remove("disk_full")
    assert set(report["faults_by_kind"]) == expected, report["faults"]
    assert report["ledger"]["ettr"] is not None and 0 < report["ledger"]["ettr"] <= 1
    assert "| overlapping training intervals | 0 | 0 |" in (out / "soak.txt").read_text()
    assert (out / "logs" / "postgres.log").exists() and list((out / "logs").glob("commander-*.log"))
    assert leftovers(report["folders"]["root"], report["folders"]["postgres"]) == []


@pytest.mark.timeout(400)
def test_ctrl_c_stops_postgres_the_workers_and_the_replicas_and_unmounts(tmp_path):
    log = tmp_path / "soak.log"
    with open(log, "wb") as handle:
        soak = subprocess.Popen(soak_command(tmp_path / "out", "--minutes", "5", "--fault-every-s", "600"), cwd=REPO,
                                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: "replicas http" in log.read_text(), 120, "the soak's stack to be up", interval_s=0.2)
        text = log.read_text()
        root = re.search(r"folder (/\S+),", text).group(1)
        pg_folder = re.search(r"PostgreSQL on \S+ \((/\S+)\)", text).group(1)
        wait_until(lambda: trainer_processes(Path(root)), 60, "a trainer to be running", interval_s=0.2)
        soak.send_signal(signal.SIGINT)
        assert soak.wait(timeout=120) == 130, log.read_text()[-3000:]
    finally:
        if soak.poll() is None:
            soak.kill()
            soak.wait()
    assert leftovers(root, pg_folder) == [], log.read_text()[-3000:]
