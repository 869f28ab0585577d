"""Real OpenEnv server processes of the example calculator environment (examples/envs/calculator),
for the environment client's tests, the GRPO trainer's and the benchmark: start N on free ports
with fault knobs (``CALC_STEP_DELAY_S``, ``CALC_FAULT``), wait until ``/health`` answers, kill one
mid-episode (a real SIGKILL), restart it on the same port, stop them all.

    with calculator_servers(tmp_path, [{}, {"CALC_FAULT": "hang_step:1"}]) as (good, hung):
        config = EnvConfig(urls=[good.url, hung.url])

A server imports openenv-core (gradio and all: ~5-8 s of CPU each), so start the ones a test
module needs together (:func:`start_all`) and share them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.commander import free_port, wait_until

CALCULATOR = Path(__file__).resolve().parents[2] / "examples" / "envs" / "calculator"
"""The example environment's folder (``calculator_env`` imports from it, for the in-process form)."""


@dataclass
class EnvServer:
    """One ``examples/envs/calculator/server.py`` process on 127.0.0.1."""

    workdir: Path
    knobs: dict[str, str] = field(default_factory=dict)
    """``CALC_*`` variables of the server's environment."""
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"calculator-{self.port}.log"

    def launch(self) -> EnvServer:
        """Start the process (do not wait: :meth:`wait_healthy`)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"the server on port {self.port} is already running (pid {self.proc.pid})")
        env = {**os.environ, "CALC_STEP_DELAY_S": "", "CALC_FAULT": "", **self.knobs}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, str(CALCULATOR / "server.py"), "--port", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    def wait_healthy(self, timeout_s: float = 60) -> EnvServer:
        wait_until(self._healthy, timeout_s, f"the calculator server on port {self.port} (log {self.log_path})")
        return self

    def start(self, timeout_s: float = 60) -> EnvServer:
        """Start and wait until ``/health`` answers healthy."""
        return self.launch().wait_healthy(timeout_s)

    def kill(self) -> None:
        """SIGKILL the process and reap it (its connections are reset by the kernel)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=15)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s (a server with a hung step never exits on SIGTERM)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _healthy(self) -> bool:
        if self.exited():
            raise AssertionError(f"the calculator server exited {self.proc.returncode}: {self.log_tail()}")
        try:
            answer = httpx.get(f"{self.url}/health", timeout=1)
        except httpx.TransportError:
            return False
        return answer.status_code == 200 and answer.json().get("status") == "healthy"


def start_all(servers: list[EnvServer], timeout_s: float = 90) -> list[EnvServer]:
    """Launch every server at once, then wait for each (they import in parallel)."""
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
