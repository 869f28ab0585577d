"""What the process-tree fence costs and how fast it ends a tree.

    python -m bench.fence                 # 20 starts of each kind, 10 worker kills
    python -m bench.fence --starts 5 --kills 3

Start cost
    Wall time from starting a trainer to reaping it, for a trainer that exits at once
    (``python -c pass``): fenced (``TrainerProcess``, the worker's way) against a bare
    ``subprocess.Popen`` of the same argv (the baseline), alternating, in this run. The
    figure is the median of each and their ratio.
Kill latency
    A stand-in worker process starts a fenced tree: a shell, a child writer and a ``setsid``,
    double-forked daemon writer, each appending a timestamp to a journal every 5 ms. The worker
    is ``kill -9``ed; the latency is the last journal write after the kill (how long any process
    of the tree kept running). Reported: median and max over the kills.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from relaytrain.worker.process import TrainerProcess

WRITER = """
import os, sys, time
if sys.argv[2] == "daemon":
    if os.fork(): os._exit(0)
    os.setsid()
    if os.fork(): os._exit(0)
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
while True:
    os.write(fd, f"{os.getpid()} {time.time():.6f}\\n".encode())
    time.sleep(0.005)
"""

WORKER = """
import os, sys, time
from pathlib import Path
from relaytrain.worker.process import TrainerProcess
folder = Path(sys.argv[1])
writer = [sys.executable, "-c", sys.argv[2], str(folder / "journal")]
command = f"{writer[0]} -c '{sys.argv[2]}' {writer[3]} daemon; exec {writer[0]} -c '{sys.argv[2]}' {writer[3]} child"
TrainerProcess(["/bin/sh", "-c", command], env=dict(os.environ), cwd=folder, log_dir=folder / "logs",
               stop_file=folder / "STOP")
time.sleep(3600)
"""


def start_cost(starts: int) -> tuple[float, float]:
    argv = [sys.executable, "-c", "pass"]
    fenced, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for _ in range(starts):
            t = time.perf_counter()
            TrainerProcess(argv, env=dict(os.environ), cwd=folder, log_dir=folder / "logs",
                           stop_file=folder / "STOP").wait()
            fenced.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.Popen(argv, cwd=folder, stdin=subprocess.DEVNULL, start_new_session=True).wait()
            bare.append(time.perf_counter() - t)
    return statistics.median(fenced), statistics.median(bare)


def journal_pids(path: Path) -> dict[int, float]:
    last: dict[int, float] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        parts = line.split()
        if len(parts) == 2:
            last[int(parts[0])] = float(parts[1])
    return last


def kill_latency() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        worker = subprocess.Popen([sys.executable, "-c", WORKER, tmp, WRITER], start_new_session=True)
        deadline = time.monotonic() + 30
        while len(journal_pids(folder / "journal")) < 2:  # both writers are running
            if time.monotonic() > deadline:
                raise RuntimeError("the tree did not start")
            time.sleep(0.01)
        killed = time.time()
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        pids = list(journal_pids(folder / "journal"))
        while any(Path(f"/proc/{pid}").exists() and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
                  for pid in pids if Path(f"/proc/{pid}/status").exists()):
            if time.monotonic() > deadline + 30:
                raise RuntimeError("the tree outlived its worker")
            time.sleep(0.01)
        return max(journal_pids(folder / "journal").values()) - killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=20, help="starts of each kind (fenced, bare)")
    parser.add_argument("--kills", type=int, default=10, help="worker kills")
    args = parser.parse_args()
    fenced, bare = start_cost(args.starts)
    print(f"start+exit of python -c pass: fenced {fenced * 1000:.1f} ms, bare {bare * 1000:.1f} ms, "
          f"ratio {fenced / bare:.2f} (+{(fenced - bare) * 1000:.1f} ms per attempt)")
    latencies = [kill_latency() for _ in range(args.kills)]
    print(f"kill -9 of the worker -> last write of its tree: median {statistics.median(latencies) * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms over {len(latencies)} kills")


if __name__ == "__main__":
    main()
