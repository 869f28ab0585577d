"""examples/stacks/liveweb-arena/bridge.py as a real server process between openenv-core's own
client and a stand-in LiveWeb-Arena server (tests/support/fake_liveweb_arena.py, speaking the
affinetes HTTP API): a multi-turn episode maps to one arena episode, stopped when the session
ends; an arena that dies or loses the episode fails the step (never a reward) and the health."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from openenv.core.generic_client import GenericEnvClient

from tests.support.commander import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
BRIDGE = ROOT / "examples" / "stacks" / "liveweb-arena" / "bridge.py"
GOTO = '<tool_call>{"name": "goto", "arguments": {"url": "https://www.coingecko.com/en/coins/bitcoin"}}</tool_call>'
STOP = '<tool_call>{"name": "stop", "arguments": {"answers": {"answer1": "42"}}}</tool_call>'


def start(argv: list[str], url: str, log: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: process.poll() is not None or _answers(url + "/openapi.json"), 30, f"{url} to listen")
    except AssertionError:
        process.kill()
        raise
    assert process.poll() is None, log.read_text()[-2000:]
    return process


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def servers(tmp_path):
    arena_port, bridge_port = free_port(), free_port()
    arena_url, bridge_url = f"http://127.0.0.1:{arena_port}", f"http://127.0.0.1:{bridge_port}"
    arena_argv = [sys.executable, "-m", "uvicorn", "tests.support.fake_liveweb_arena:app", "--port", str(arena_port)]
    processes = {"arena": start(arena_argv, arena_url, tmp_path / "arena.log")}
    processes["bridge"] = start([sys.executable, str(BRIDGE), "--arena-url", arena_url, "--port", str(bridge_port),
                                 "--max-sessions", "4", "--timeout-s", "5"], bridge_url, tmp_path / "bridge.log")

    def restart_arena() -> None:
        processes["arena"] = start(arena_argv, arena_url, tmp_path / "arena.log")

    yield {"arena_url": arena_url, "bridge_url": bridge_url, "processes": processes, "restart_arena": restart_arena}
    for process in processes.values():
        stop(process)


def test_a_multi_turn_episode_is_one_arena_episode(servers):
    assert httpx.get(servers["bridge_url"] + "/health").json() == {"status": "healthy"}
    with GenericEnvClient(base_url=servers["bridge_url"]).sync() as env:
        first = env.reset(seed=3, task_id=7)
        assert "seed=3 task_id=7" in first.observation["text"] and not first.done
        (episode,) = httpx.get(servers["arena_url"] + "/episodes").json()["open"]
        moved = env.step({"message": "Let me look.\n" + GOTO})
        assert "coingecko.com" in moved.observation["text"] and moved.reward == pytest.approx(0.05)
        garbled = env.step({"message": "I think the answer is 42"})  # the policy's fault: a penalty, not an error
        assert garbled.reward == pytest.approx(-0.1) and not garbled.done
        assert "parse failed" in garbled.observation["text"]
        last = env.step({"message": STOP})
        assert last.done and last.reward == 0.0
    wait_until(lambda: episode in httpx.get(servers["arena_url"] + "/episodes").json()["stopped"], 10,
               "the bridge to stop the arena's episode when the session ends")


def test_a_dead_arena_or_a_lost_episode_fails_the_step_and_the_health(servers):
    bridge_url = servers["bridge_url"]
    with GenericEnvClient(base_url=bridge_url).sync() as env:
        env.reset(seed=1)
        os.kill(servers["processes"]["arena"].pid, signal.SIGKILL)
        servers["processes"]["arena"].wait()
        with pytest.raises(Exception, match="LiveWeb-Arena .* step: ConnectError"):
            env.step({"message": GOTO})
        health = httpx.get(bridge_url + "/health")
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"
        servers["restart_arena"]()  # a new arena process: the episode is gone
        with pytest.raises(Exception, match="lost the episode \\(episode_not_found\\)"):
            env.step({"message": GOTO})
    assert httpx.get(bridge_url + "/health").json() == {"status": "healthy"}
    with GenericEnvClient(base_url=bridge_url).sync() as env:
        assert not env.reset(seed=2).done  # a new episode works again
