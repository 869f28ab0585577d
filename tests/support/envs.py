"""Real OpenEnv server processes of the example calculator environment (examples/envs/calculator),
for the environment client's tests, the GRPO trainer's and the benchmark: start N on free ports
with fault knobs (``CALC_STEP_DELAY_S``, ``CALC_FAULT``), wait until ``/health`` answers, kill one
mid-episode (a real SIGKILL), restart it on the same port, stop them all.

    with calculator_servers(tmp_path, [{}, {"CALC_FAULT": "hang_step:1"}]) as (good, hung):
        config = EnvConfig(urls=[good.url, hung.url])

Importing openenv-core (gradio and all) takes 5-8 s of CPU, more than a test may spend on each of
its servers. So by default a server is forked from a *fork server*: one process per test process
that imported ``server.py`` once and forks a child per server, which sets its knobs and runs the
same ``server.main``. Each server is still a process of its own (its own pid, port and fate: a
SIGKILL or an ``exit_step`` ends it alone). ``EnvServer(..., fork=False)`` runs
``python examples/envs/calculator/server.py`` instead, as a user would (the benchmark does).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.commander import free_port, wait_until

CALCULATOR = Path(__file__).resolve().parents[2] / "examples" / "envs" / "calculator"
"""The example environment's folder (``calculator_env`` imports from it, for the in-process form)."""

_FORK_SERVER = r"""
import json, os, signal, sys
sys.path.insert(0, sys.argv[1])
import server  # openenv-core, imported once for every server forked below
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the servers that end
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        os.environ.update(request["env"])
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(log, 1)
        os.dup2(log, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        try:
            server.main(["--port", str(request["port"])])
        finally:
            os._exit(0)
    print(pid, flush=True)
"""


class _ForkServer:
    """The process that forks calculator servers (started on first use, stopped at exit)."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-c", _FORK_SERVER, str(CALCULATOR)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, start_new_session=True)
        self._lock = threading.Lock()
        atexit.register(self.stop)

    def spawn(self, port: int, env: dict[str, str], log: Path) -> int:
        """Fork a server on ``port`` with ``env`` added to its environment; its pid."""
        with self._lock:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the calculator fork server exited {self._proc.returncode}")
            self._proc.stdin.write(json.dumps({"port": port, "env": env, "log": str(log)}) + "\n")
            self._proc.stdin.flush()
            answer = self._proc.stdout.readline()
        if not answer.strip().isdigit():
            raise RuntimeError(f"the calculator fork server answered {answer!r}")
        return int(answer)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=15)


_fork_server: _ForkServer | None = None


def fork_server() -> _ForkServer:
    global _fork_server
    if _fork_server is None:
        _fork_server = _ForkServer()
    return _fork_server


@dataclass
class EnvServer:
    """One calculator server process on 127.0.0.1 (forked from the fork server, or ``server.py`` run)."""

    workdir: Path
    knobs: dict[str, str] = field(default_factory=dict)
    """``CALC_*`` variables of the server's environment."""
    port: int = field(default_factory=free_port)
    fork: bool = True
    pid: int | None = None
    proc: subprocess.Popen | None = None
    """The process when not forked."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"calculator-{self.port}.log"

    def launch(self) -> EnvServer:
        """Start the process (do not wait: :meth:`wait_healthy`)."""
        if self.pid is not None and not self.exited():
            raise RuntimeError(f"the server on port {self.port} is already running (pid {self.pid})")
        env = {"CALC_STEP_DELAY_S": "", "CALC_FAULT": "", **self.knobs}
        if self.fork:
            self.pid = fork_server().spawn(self.port, env, self.log_path)
            return self
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, str(CALCULATOR / "server.py"), "--port", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                         start_new_session=True)
        self.pid = self.proc.pid
        return self

    def wait_healthy(self, timeout_s: float = 60) -> EnvServer:
        wait_until(self._healthy, timeout_s, f"the calculator server on port {self.port} (log {self.log_path})")
        return self

    def start(self, timeout_s: float = 60) -> EnvServer:
        """Start and wait until ``/health`` answers healthy."""
        return self.launch().wait_healthy(timeout_s)

    def kill(self) -> None:
        """SIGKILL the process and wait until it is gone (its connections are reset by the kernel)."""
        self.signal(signal.SIGKILL)
        wait_until(self.exited, 15, f"the calculator server {self.pid} to die")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s (a server with a hung step never exits on SIGTERM)."""
        self.signal(signal.SIGTERM)
        try:
            wait_until(self.exited, 5, "")
        except AssertionError:
            self.kill()

    def signal(self, sig: int) -> None:
        if self.pid is not None and not self.exited():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def exited(self) -> bool:
        """Whether the process has ended (and been reaped)."""
        if self.pid is None:
            return False
        if self.proc is not None:
            return self.proc.poll() is not None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        return False

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _healthy(self) -> bool:
        if self.exited():
            raise AssertionError(f"the calculator server {self.pid} exited: {self.log_tail()}")
        try:
            answer = httpx.get(f"{self.url}/health", timeout=1)
        except httpx.TransportError:
            return False
        return answer.status_code == 200 and answer.json().get("status") == "healthy"


def start_all(servers: list[EnvServer], timeout_s: float = 90) -> list[EnvServer]:
    """Launch every server, then wait for each (so that they start in parallel)."""
    try:
        for server in servers:
            server.launch()
        for server in servers:
            server.wait_healthy(timeout_s)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


@contextlib.contextmanager
def calculator_servers(workdir: Path, knobs: list[dict[str, str]], timeout_s: float = 90) -> Iterator[list[EnvServer]]:
    """One server per entry of ``knobs`` (its ``CALC_*`` variables), healthy; all stopped afterwards."""
    servers = start_all([EnvServer(workdir, k) for k in knobs], timeout_s)
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


async def solve(session, seed: int, *, use_tool: bool = True) -> tuple[float | None, list]:
    """The scripted 3-turn calculator episode: reset(seed), ``calc a+b``, then the tool's answer.
    Returns the final reward and every :class:`~relaytrain.envs.StepResult`, in order."""
    first = await session.reset(seed=seed)
    a, b = first.observation["text"].removesuffix("=").split("+")
    results = [first]
    if use_tool:
        results.append(await session.step(f"calc {a}+{b}"))
        answer = results[-1].observation["text"].strip().removeprefix("=")
    else:
        answer = str(int(a) + int(b))
    results.append(await session.step(answer))
    return results[-1].reward, results
