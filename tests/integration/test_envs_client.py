"""The environment client against real OpenEnv servers (examples/envs/calculator, openenv-core):
a server SIGKILLed mid-episode, a hung step, a crash, a garbled reply, every replica gone, a
restarted replica, a bad task, a schema without the action's field, a handshake refused 503 or
404, the concurrency bound, and the in-process form giving what the wire gives.

Each episode is :func:`tests.support.envs.solve`: reset(seed), ``calc a+b``, the tool's answer; it
scores 1.0 only when the three replies came from one environment that kept its state.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route, WebSocketRoute

from relaytrain.config import EnvConfig
from relaytrain.envs import EnvLoop, EnvPool, EpisodeFailed, FailureKind, WebSocketSession, open_pool
from relaytrain.errors import EnvironmentRejected, EnvironmentUnavailable
from tests.support.commander import free_port, wait_until
from tests.support.envs import CALCULATOR, EnvServer, solve, start_all

KNOBS = {
    "a": {}, "b": {},
    "hang": {"CALC_FAULT": "hang_step:1"},
    "crash": {"CALC_FAULT": "crash_step:2"},
    "garbled": {"CALC_FAULT": "malformed_step:2"},
    "exit1": {"CALC_FAULT": "exit_step:1"},
    "exit2": {"CALC_FAULT": "exit_step:1"},
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Every server this module needs, started together (each imports openenv: seconds of CPU)."""
    folder = tmp_path_factory.mktemp("calculator")
    started = start_all([EnvServer(folder, knobs) for knobs in KNOBS.values()])
    yield dict(zip(KNOBS, started, strict=True))
    for server in started:
        server.kill()


@pytest.fixture(scope="module")
def loop():
    env_loop = EnvLoop("test-envs")
    yield env_loop
    env_loop.close()


@pytest.fixture(scope="module")
def refusing():
    """A tiny Starlette app that passes the health and schema checks but is no OpenEnv session
    server: ``/ws`` answers the handshake 503; under ``/plain`` there is no ``/ws`` at all (403);
    under ``/full`` every session is refused ``CAPACITY_REACHED``."""

    async def health(request):
        return JSONResponse({"status": "healthy"})

    async def schema(request):
        return JSONResponse({"action": {"properties": {"message": {"type": "string"}}}, "observation": {}, "state": {}})

    async def deny(websocket):
        await websocket.send_denial_response(PlainTextResponse("overloaded", status_code=503))

    async def full(websocket):  # what openenv-core does when max_concurrent_envs sessions are open
        await websocket.accept()
        await websocket.send_json({"type": "error", "data": {"message": "at capacity", "code": "CAPACITY_REACHED"}})
        await websocket.close()

    checks = [Route("/health", health), Route("/schema", schema)]
    app = Starlette(routes=[*checks, WebSocketRoute("/ws", deny), Mount("/plain", routes=checks),
                            Mount("/full", routes=[*checks, WebSocketRoute("/ws", full)])])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 30, "the refusing Starlette app to listen")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def config(*urls: str, **overrides) -> EnvConfig:
    return EnvConfig(urls=list(urls), **{"health_interval_s": 0.2, "turn_timeout_s": 10.0, **overrides})


def with_pool(loop: EnvLoop, env: EnvConfig, body):
    """``await body(pool)`` on a started pool, on the loop; closes the pool."""

    async def go():
        pool = open_pool(env)
        await pool.start()
        try:
            return await body(pool)
        finally:
            await pool.aclose()

    return loop.run(go(), timeout=120)


def recorded(wheres: list[str]):
    """A play that solves seed 7 and notes the replica of every try."""

    async def play(session):
        wheres.append(session.where)
        reward, _ = await solve(session, 7)
        return reward

    return play


async def until_up(pool: EnvPool, n: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while pool.metrics()["env/replicas_up"] < n:
        assert time.monotonic() < deadline, f"fewer than {n} replicas up after {timeout_s} s"
        await asyncio.sleep(0.05)


def failures(metrics: dict[str, float]) -> dict[str, float]:
    return {k.removeprefix("env/failures/"): v for k, v in metrics.items() if k.startswith("env/failures/") and v}


def test_episodes_spread_round_robin_and_are_counted(servers, loop):
    a, b = servers["a"], servers["b"]
    wheres: list[str] = []

    async def body(pool):
        rewards = [await pool.run_episode(recorded(wheres), task=f"t{i}") for i in range(4)]
        return rewards, pool.metrics(), pool.metrics()

    rewards, metrics, again = with_pool(loop, config(a.url, b.url), body)
    assert rewards == [1.0] * 4
    assert wheres == [a.url, b.url, a.url, b.url]
    assert metrics["env/episodes"] == 4 and metrics["env/retries"] == 0 and failures(metrics) == {}
    assert metrics["env/turns_mean"] == 2.0 and metrics["env/replicas_up"] == 2
    assert 0 < metrics["env/step_latency_p50"] <= metrics["env/step_latency_p95"]
    assert "env/turns_mean" not in again and "env/step_latency_p50" not in again  # a window since the last call
    assert again["env/episodes"] == 4


def test_killed_mid_episode_is_retried_and_the_restarted_replica_comes_back(servers, loop):
    a, b = servers["a"], servers["b"]
    wheres: list[str] = []

    async def kill_a_after_reset(session):
        wheres.append(session.where)
        first = await session.reset(seed=7)
        if session.where == a.url:
            a.kill()  # SIGKILL between the reset and the first step
        x, y = first.observation["text"].removesuffix("=").split("+")
        tool = await session.step(f"calc {x}+{y}")
        return (await session.step(tool.observation["text"].strip("=\n"))).reward

    async def body(pool):
        reward = await pool.run_episode(kill_a_after_reset, task="kill")
        after_kill = pool.metrics()
        a.start()  # the same port
        await until_up(pool, 2)
        later = [await pool.run_episode(recorded(wheres), task=f"back{i}") for i in range(2)]
        return reward, after_kill, later, pool.metrics()

    try:
        reward, after_kill, later, final = with_pool(loop, config(a.url, b.url), body)
    finally:
        if a.exited():
            a.start()
    assert reward == 1.0
    assert wheres[:2] == [a.url, b.url]
    assert after_kill["env/retries"] == 1 and failures(after_kill) == {"connect": 1}
    assert after_kill["env/replicas_up"] == 1 and after_kill["env/episodes"] == 1
    assert later == [1.0, 1.0] and a.url in wheres[2:]
    assert final["env/replicas_up"] == 2 and final["env/episodes"] == 3


@pytest.mark.parametrize("faulty, kind", [("hang", "timeout"), ("crash", "server_error"), ("garbled", "malformed")])
def test_a_failed_try_is_retried_on_the_other_replica(servers, loop, faulty, kind):
    bad, good = servers[faulty], servers["b"]
    wheres: list[str] = []

    async def body(pool):
        return await pool.run_episode(recorded(wheres), task=faulty), pool.metrics()

    reward, metrics = with_pool(loop, config(bad.url, good.url, turn_timeout_s=1.0), body)
    assert reward == 1.0 and wheres == [bad.url, good.url]
    assert failures(metrics) == {kind: 1} and metrics["env/retries"] == 1 and metrics["env/episodes"] == 1
    assert metrics["env/replicas_up"] == 2  # a failure that is not a lost connection does not mark it down


def test_every_replica_gone_raises_unavailable_after_down_timeout(servers, loop):
    dying = [servers["exit1"], servers["exit2"]]  # each exits at its first step
    seen: dict[str, object] = {}

    async def body(pool):
        try:
            await pool.run_episode(recorded([]), task="doomed")
        except EnvironmentUnavailable as exc:
            seen["error"] = exc
        return pool.metrics()

    metrics = with_pool(loop, config(*(s.url for s in dying), down_timeout_s=1.0, max_attempts=5), body)
    message = str(seen["error"])
    assert "unreachable for 1 s" in message and all(s.url in message for s in dying), message
    assert failures(metrics) == {"connect": 2} and metrics["env/replicas_up"] == 0 and metrics["env/episodes"] == 0
    assert all(s.exited() for s in dying)


def test_a_bad_task_is_rejected_naming_it(servers, loop):
    a, b = servers["a"], servers["b"]

    async def bad_task(session):
        await session.reset(task="12+x")

    async def body(pool):
        with pytest.raises(EnvironmentRejected) as caught:
            await pool.run_episode(bad_task, task="12+x")
        return caught.value, pool.metrics()

    error, metrics = with_pool(loop, config(a.url, b.url), body)
    assert "reset of task 12+x refused" in str(error) and "bad task '12+x'" in str(error), str(error)
    assert failures(metrics) == {"server_error": 2} and metrics["env/retries"] == 1  # refused on a, then on b


def test_a_schema_without_the_action_field_is_rejected_at_start(servers, loop):
    pool = open_pool(config(servers["b"].url, action_field="command"))
    with pytest.raises(EnvironmentRejected) as caught:
        loop.run(pool.start(), timeout=30)
    loop.run(pool.aclose(), timeout=30)
    message = str(caught.value)
    assert "'command'" in message and servers["b"].url in message and "message" in message, message


def test_a_replica_down_at_start_is_marked_down_and_skipped(servers, loop):
    dead = f"http://127.0.0.1:{free_port()}"
    wheres: list[str] = []

    async def body(pool):
        up = pool.metrics()["env/replicas_up"]
        return up, [await pool.run_episode(recorded(wheres), task=f"t{i}") for i in range(2)]

    up, rewards = with_pool(loop, config(dead, servers["b"].url), body)
    assert up == 1 and rewards == [1.0, 1.0] and wheres == [servers["b"].url] * 2


def test_a_handshake_answered_503_is_a_server_error_retried(servers, loop, refusing):
    wheres: list[str] = []

    async def body(pool):
        return await pool.run_episode(recorded(wheres), task="503"), pool.metrics()

    reward, metrics = with_pool(loop, config(refusing, servers["b"].url), body)
    assert reward == 1.0 and wheres == [servers["b"].url]  # the first try failed at the handshake, before play
    assert failures(metrics) == {"server_error": 1} and metrics["env/retries"] == 1
    assert metrics["env/replicas_up"] == 2


def test_a_replica_at_capacity_sends_the_episode_elsewhere_without_costing_an_attempt(servers, loop, refusing):
    async def body(pool):
        return await pool.run_episode(recorded([]), task="full"), pool.metrics()

    reward, metrics = with_pool(loop, config(f"{refusing}/full", servers["b"].url, max_attempts=1), body)
    assert reward == 1.0 and failures(metrics) == {"capacity": 1} and metrics["env/retries"] == 1


def test_a_capacity_answer_is_read_even_when_the_server_closed_before_the_request(loop, refusing):
    """openenv-core answers CAPACITY_REACHED as soon as the session opens, then closes: the reset
    may find the connection closed, and must still read the answer (not call it a lost connection)."""

    async def go():
        session = WebSocketSession(f"{refusing}/full", "late", config(f"{refusing}/full"))
        await session.open()
        await asyncio.wait_for(session._ws.wait_closed(), 10)  # the server has answered and closed
        try:
            with pytest.raises(EpisodeFailed) as caught:
                await session.reset(seed=1)
        finally:
            await session.close()
        return caught.value

    failure = loop.run(go(), timeout=30)
    assert failure.kind is FailureKind.CAPACITY and "CAPACITY_REACHED: at capacity" in failure.message


def test_a_handshake_answered_4xx_is_rejected(loop, refusing):
    async def body(pool):
        with pytest.raises(EnvironmentRejected) as caught:
            await pool.run_episode(recorded([]), task="nows")
        return caught.value

    error = with_pool(loop, config(f"{refusing}/plain"), body)
    assert "not an OpenEnv server?" in str(error) and f"{refusing}/plain" in str(error), str(error)


def test_concurrency_never_exceeds_the_bound(servers, loop):
    bound, open_now, peak = 3, [0], [0]

    async def play(session):
        open_now[0] += 1
        peak[0] = max(peak[0], open_now[0])
        try:
            deadline = time.monotonic() + 10
            while peak[0] < bound and time.monotonic() < deadline:  # hold until the bound is reached once
                await asyncio.sleep(0.01)
            reward, _ = await solve(session, 3)
            return reward
        finally:
            open_now[0] -= 1

    async def body(pool):
        return await asyncio.gather(*(pool.run_episode(play, task=f"c{i}") for i in range(12)))

    rewards = with_pool(loop, config(servers["a"].url, servers["b"].url, concurrency=bound), body)
    assert rewards == [1.0] * 12
    assert peak[0] == bound


def test_in_process_gives_what_the_wire_gives(servers, loop, monkeypatch):
    monkeypatch.syspath_prepend(str(CALCULATOR))

    async def body(pool):
        async def play(session):
            return (await solve(session, seed))[1]

        out = []
        for seed in range(4):
            out.append(await pool.run_episode(play, task=f"seed {seed}"))
        return out

    wire = with_pool(loop, config(servers["b"].url), body)
    local = with_pool(loop, EnvConfig(module="calculator_env:make_env"), body)
    assert local == wire
    assert [steps[-1].reward for steps in wire] == [1.0] * 4 and all(len(steps) == 3 for steps in wire)
