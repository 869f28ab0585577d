"""Real workers and a TCP proxy that can cut the line, for the relay tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

COUNTER = Path(__file__).resolve().parents[2] / "examples" / "trainers" / "counter_trainer.py"


def counter_final_state(max_steps: int) -> str:
    """The counter trainer's state after ``max_steps`` uninterrupted steps."""
    import hashlib

    state = "genesis"
    for step in range(1, max_steps + 1):
        state = hashlib.sha256(f"{state}:{step}".encode()).hexdigest()
    return state


def counter_run(run_id: str, store: Path, *, max_steps: int = 60, every: int = 10, step_s: float = 0.05,
                env: dict | None = None, **extra) -> dict:
    config = {
        "run_id": run_id,
        "kind": "command",
        "max_steps": max_steps,
        "checkpoint": {"every_steps": every, "keep_last": 100},
        "lease": {"ttl_s": 3, "margin_s": 1.5, "grace_s": 1},
        "retry": {"max_retries": 3, "backoff_base_s": 0.2, "backoff_cap_s": 1},
        "store": str(store),
        "trainer": {"command": [sys.executable, str(COUNTER)],
                    "env": {"COUNTER_STEP_S": str(step_s), **(env or {})}},
    }
    config.update(extra)
    return config


@dataclass
class WorkerProc:
    """A ``relay worker`` process."""

    commander_url: str
    token: str
    worker_id: str
    workdir: Path
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir.parent / f"{self.worker_id}.log"

    def start(self) -> WorkerProc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "relaytrain.cli", "worker", "--commander", self.commander_url,
               "--token", self.token, "--worker-id", self.worker_id, "--workdir", str(self.workdir),
               "--claim-wait", "1", *self.extra]
        # One thread and no GPU, as the standalone runs the tests compare with: bit-exact is a CPU promise.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONHASHSEED": "0"}
        with open(self.log_path, "ab") as log:  # in its workdir: a relative store resolves there
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                         cwd=self.workdir)
        return self

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def trainer_pids(self, run_id: str) -> list[int]:
        logs = self.workdir / "runs" / run_id / "logs"
        return [int(p.read_text()) for p in logs.glob("attempt_*/trainer.pid")]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class RolloutWorkerProc:
    """A ``relay rollout-worker`` process."""

    commander_url: str
    token: str
    worker_id: str
    folder: Path
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.folder / f"{self.worker_id}.log"

    def start(self) -> RolloutWorkerProc:
        self.folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "relaytrain.cli", "rollout-worker", "--commander", self.commander_url,
               "--token", self.token, "--worker-id", self.worker_id, "--threads", "1", *self.extra]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONHASHSEED": "0"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                         cwd=self.folder)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def process_tree(root: int) -> list[int]:
    """``root`` and its live descendants (the worker's fence's view: ``relaytrain.worker.fence``)."""
    from relaytrain.worker.fence import descendants

    return [pid for pid in [root, *descendants(root)] if process_alive(pid)]


def process_alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


class Proxy:
    """Forwards 127.0.0.1:port to a target; :meth:`cut` stops forwarding (a partition:
    connections hang, nothing is refused), :meth:`restore` forwards again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = self._server.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._closing = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        self._open.clear()
        with self._lock:  # in-flight connections go silent too
            for s in self._sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._sockets.clear()

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._closing = True
        self.cut()
        self._server.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self._open.wait()  # while cut, a new connection hangs unanswered
        if self._closing:
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        with self._lock:
            self._sockets += [client, upstream]
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while self._open.is_set() and (data := src.recv(65536)):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass
