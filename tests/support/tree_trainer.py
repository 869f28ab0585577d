"""A trainer whose process tree is the worst case for fencing: the counter trainer, plus a
child process and a ``setsid``, double-forked daemon (and, under ``torchrun``, a second rank)
that all append ``ROLE EPOCH PID TIME`` lines to the journal ``$TREE_JOURNAL`` every 20 ms
until they are killed or the trainer finishes.

    python tree_trainer.py                      the trainer (rank 0 under torchrun)
    python tree_trainer.py --writer ROLE        a journal writer
    python tree_trainer.py --daemon ROLE        double-fork into a new session, then write
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import threading
import time
from pathlib import Path

COUNTER = Path(__file__).resolve().parents[2] / "examples" / "trainers" / "counter_trainer.py"
PERIOD_S = 0.02


def write_forever(role: str, stop: threading.Event | None = None) -> None:
    journal, epoch = os.environ["TREE_JOURNAL"], os.environ.get("RELAY_EPOCH", "0")
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    while stop is None or not stop.is_set():
        os.write(fd, f"{role} {epoch} {os.getpid()} {time.time():.6f}\n".encode())
        time.sleep(PERIOD_S)


def daemonize(role: str) -> None:
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    write_forever(role)


def train() -> int:
    rank = int(os.environ.get("RANK", "0"))
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    if rank != 0:  # the second rank writes until rank 0 has finished training
        stop = threading.Event()
        threading.Thread(target=write_forever, args=(f"rank{rank}", stop), daemon=True).start()
        dist.barrier()
        stop.set()
        return 0
    me = [sys.executable, __file__]
    subprocess.Popen([*me, "--writer", "child"])
    subprocess.run([*me, "--daemon", "daemon"], check=True)
    stop = threading.Event()
    threading.Thread(target=write_forever, args=("trainer", stop), daemon=True).start()
    try:
        runpy.run_path(str(COUNTER), run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    stop.set()
    if distributed:
        dist.barrier()
    return code


if __name__ == "__main__":
    if sys.argv[1:2] == ["--writer"]:
        write_forever(sys.argv[2])
    elif sys.argv[1:2] == ["--daemon"]:
        daemonize(sys.argv[2])
    else:
        sys.exit(train())
