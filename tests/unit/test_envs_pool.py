"""The environment pool on in-process environments (``env.module``): what a failed try costs, what
is rejected, the counters, the concurrency bound, determinism; and :class:`EnvLoop`.

The environments are small classes in this module, made by its factories (``env.module =
"tests.unit.test_envs_pool:<factory>"``); ``CALLS`` records every call of every session in order.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from relaytrain.config import EnvConfig
from relaytrain.envs import EnvLoop, EnvPool, EpisodeFailed, FailureKind, StepResult, open_pool
from relaytrain.errors import ConfigError, EnvironmentRejected, EnvironmentUnavailable

HERE = "tests.unit.test_envs_pool"
CALLS: list[tuple] = []
"""(session number, call, argument) of every call, in order."""
CLOSED: list[int] = []
STEP_FAILURES = [0]
"""How many more steps raise (over all sessions)."""


@pytest.fixture(autouse=True)
def fresh_records():
    CALLS.clear()
    CLOSED.clear()
    STEP_FAILURES[0] = 0


class Adder:
    """reset(seed, task) → "a+b="; step({"message": "<n>"}) ends the episode, reward 1.0 if n is a+b."""

    sessions = 0

    def __init__(self) -> None:
        Adder.sessions += 1
        self.number = Adder.sessions
        self.total: int | None = None

    def reset(self, seed: int | None = None, task: str | None = None) -> dict[str, Any]:
        CALLS.append((self.number, "reset", seed, task))
        a, b = (int(x) for x in task.split("+")) if task else (seed or 0, 10 * (seed or 0))
        self.total = a + b
        return {"observation": {"text": f"{a}+{b}="}, "reward": None, "done": False}

    def step(self, action: dict[str, Any]) -> dict[str, Any]:
        CALLS.append((self.number, "step", action["message"]))
        if STEP_FAILURES[0] > 0:
            STEP_FAILURES[0] -= 1
            raise RuntimeError("the tool crashed")
        return {"observation": {"text": ""}, "reward": float(int(action["message"]) == self.total), "done": True}

    def close(self) -> None:
        CLOSED.append(self.number)


class TakesAnything(Adder):
    def reset(self, **kwargs: Any) -> dict[str, Any]:
        CALLS.append((self.number, "reset", kwargs))
        return {"observation": {"kwargs": kwargs}, "reward": None, "done": False}


class RefusesTasks(Adder):
    def reset(self, seed: int | None = None, task: str | None = None) -> dict[str, Any]:
        raise ValueError(f"bad task {task!r}")


class Garbled(Adder):
    def step(self, action: dict[str, Any]) -> dict[str, Any]:
        return {"observation": {"text": ""}, "reward": "garbled", "done": True}


class Move(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str


class Seen(BaseModel):
    text: str
    reward: float | None = None
    done: bool = False
    metadata: dict[str, Any] = {}


class Typed(Adder):
    """step's action is a pydantic model, and it returns a pydantic observation (as openenv's do)."""

    def step(self, action: Move, timeout_s: float | None = None) -> Seen:
        CALLS.append((self.number, "step", type(action).__name__))
        return Seen(text=f"got {action.message}", reward=True, done=True, metadata={"hidden": 1})


def make_adder() -> Adder:
    return Adder()


def make_takes_anything() -> TakesAnything:
    return TakesAnything()


def make_refuses_tasks() -> RefusesTasks:
    return RefusesTasks()


def make_garbled() -> Garbled:
    return Garbled()


def make_typed() -> Typed:
    return Typed()


def make_nothing() -> Adder:
    raise OSError("no environment today")


NOT_CALLABLE = 3


def env(factory: str, **overrides: Any) -> EnvConfig:
    return EnvConfig(module=f"{HERE}:{factory}", **overrides)


def with_pool(config: EnvConfig, body):
    async def go():
        pool = open_pool(config)
        await pool.start()
        try:
            return await body(pool)
        finally:
            await pool.aclose()

    return asyncio.run(go())


async def answer(session, seed: int = 3) -> float | None:
    first = await session.reset(seed=seed)
    a, b = first.observation["text"].removesuffix("=").split("+")
    return (await session.step(str(int(a) + int(b)))).reward


def failures(metrics: dict[str, float]) -> dict[str, float]:
    return {k.removeprefix("env/failures/"): v for k, v in metrics.items() if k.startswith("env/failures/") and v}


def test_episodes_run_in_process_and_are_counted():
    wheres: list[str] = []

    async def play(session):
        wheres.append(session.where)
        reward = await answer(session)
        return reward, session.turns, session.env_seconds

    async def body(pool):
        return [await pool.run_episode(play, task=f"t{i}") for i in range(3)], pool.urls, pool.metrics()

    results, urls, metrics = with_pool(env("make_adder"), body)
    assert [r[:2] for r in results] == [(1.0, 1)] * 3 and all(r[2] > 0 for r in results)
    assert urls == wheres[:1] == [f"module:{HERE}:make_adder"] and len(wheres) == 3
    assert metrics["env/episodes"] == 3 and metrics["env/retries"] == 0 and failures(metrics) == {}
    assert metrics["env/turns_mean"] == 1.0 and metrics["env/replicas_up"] == 1
    assert set(metrics) >= {f"env/failures/{k.value}" for k in FailureKind} | {"env/step_latency_p95"}
    assert len(CLOSED) == 3  # each episode's environment is closed


def test_reset_kwargs_are_the_configs_under_the_callers_and_unknown_ones_are_dropped():
    async def play(session):
        return (await session.reset(seed=1, task="2+3")).observation

    defaults = {"reset": {"task": "4+4", "difficulty": "hard"}}
    assert with_pool(env("make_adder", **defaults), lambda pool: pool.run_episode(play, task="k")) == {"text": "2+3="}
    assert CALLS[-1][1:] == ("reset", 1, "2+3")  # 'difficulty' is not in reset's signature: dropped, as openenv does
    observation = with_pool(env("make_takes_anything", **defaults), lambda pool: pool.run_episode(play, task="k"))
    assert observation == {"kwargs": {"task": "2+3", "difficulty": "hard", "seed": 1}}  # **kwargs takes them all


def test_a_pydantic_action_is_validated_and_a_pydantic_observation_flattened():
    async def play(session):
        await session.reset(seed=1)
        return await session.step("hi")

    result = with_pool(env("make_typed"), lambda pool: pool.run_episode(play, task="typed"))
    assert result == StepResult(observation={"text": "got hi"}, reward=1.0, done=True)
    assert CALLS[-1][1:] == ("step", "Move")
    with pytest.raises(EnvironmentRejected) as caught:  # {"command": "hi"} does not fit Move
        with_pool(env("make_typed", action_field="command"), lambda pool: pool.run_episode(play, task="typed"))
    assert "step of task typed rejected: the action does not fit Move" in str(caught.value)


def test_an_exception_in_step_is_a_server_error_retried():
    STEP_FAILURES[0] = 1

    async def body(pool):
        return await pool.run_episode(answer, task="flaky"), pool.metrics()

    reward, metrics = with_pool(env("make_adder"), body)
    assert reward == 1.0 and failures(metrics) == {"server_error": 1} and metrics["env/retries"] == 1
    assert metrics["env/episodes"] == 1
    assert [c[0] for c in CALLS if c[1] == "reset"] == sorted({c[0] for c in CALLS})  # the retry: a new environment


def test_a_reset_refused_twice_with_the_same_message_is_a_bad_task():
    async def play(session):
        await session.reset(task="9+x")

    async def body(pool):
        with pytest.raises(EnvironmentRejected) as caught:
            await pool.run_episode(play, task="9+x")
        return caught.value, pool.metrics()

    error, metrics = with_pool(env("make_refuses_tasks"), body)
    assert str(error) == f"module:{HERE}:make_refuses_tasks: reset of task 9+x refused: ValueError: bad task '9+x'"
    assert failures(metrics) == {"server_error": 2} and metrics["env/retries"] == 1


def test_a_malformed_reply_is_retried_until_max_attempts_then_unavailable():
    async def body(pool):
        with pytest.raises(EnvironmentUnavailable) as caught:
            await pool.run_episode(answer, task="seed 3")
        return caught.value, pool.metrics()

    error, metrics = with_pool(env("make_garbled", max_attempts=2), body)
    message = str(error)
    assert "task seed 3 failed 2 times" in message and f"module:{HERE}:make_garbled" in message, message
    assert "reward 'garbled'" in message
    assert failures(metrics) == {"malformed": 2} and metrics["env/retries"] == 1 and metrics["env/episodes"] == 0


@pytest.mark.parametrize("limits, says", [
    ({"turn_timeout_s": 1e-9}, "reset took longer than 1e-09 s (env.turn_timeout_s)"),
    ({"episode_timeout_s": 1e-9}, "reset ran past the episode's 1e-09 s of environment time"),
])
def test_a_call_past_its_timeout_is_a_timeout(limits, says):
    async def body(pool):
        with pytest.raises(EnvironmentUnavailable) as caught:
            await pool.run_episode(answer, task="slow")
        return caught.value, pool.metrics()

    error, metrics = with_pool(env("make_adder", max_attempts=1, **limits), body)
    assert says in str(error) and failures(metrics) == {"timeout": 1} and metrics["env/retries"] == 0


def test_play_may_fail_a_try_itself_and_anything_else_propagates():
    tries = []

    async def picky(session):
        tries.append(session.where)
        await session.reset(seed=2)
        if len(tries) == 1:  # e.g. the observation template names a field the observation lacks
            raise EpisodeFailed(FailureKind.MALFORMED, session.where, "the template's field 'feedback' is missing")
        return "ok"

    async def broken(session):
        await session.reset(seed=2)
        raise KeyError("a bug in play")

    async def body(pool):
        result = await pool.run_episode(picky, task="picky")
        with pytest.raises(KeyError):
            await pool.run_episode(broken, task="broken")
        return result, pool.metrics()

    result, metrics = with_pool(env("make_adder"), body)
    assert result == "ok" and len(tries) == 2
    assert failures(metrics) == {"malformed": 1} and metrics["env/retries"] == 1 and metrics["env/episodes"] == 1
    assert len(CLOSED) == 3  # the broken play's environment was closed too


def test_concurrency_is_bounded_and_episodes_interleave_the_same_way_every_time():
    def run_once() -> tuple[list[tuple], int, list[float | None]]:
        CALLS.clear()
        open_now, peak = [0], [0]

        async def play(session):
            open_now[0] += 1
            peak[0] = max(peak[0], open_now[0])
            try:
                first = await session.reset(seed=len(CALLS))
                await asyncio.sleep(0)  # let the others run
                a, b = first.observation["text"].removesuffix("=").split("+")
                return (await session.step(str(int(a) + int(b)))).reward
            finally:
                open_now[0] -= 1

        async def body(pool):
            return await asyncio.gather(*(pool.run_episode(play, task=f"c{i}") for i in range(6)))

        rewards = with_pool(env("make_adder", concurrency=2), body)
        return [c[1:] for c in CALLS], peak[0], rewards

    first, second = run_once(), run_once()
    assert first[1] == 2 and first[2] == [1.0] * 6
    assert first == second


def test_a_factory_that_cannot_be_loaded_is_a_config_error_naming_env_module():
    for module, says in [("tests.no_such_module:make", "ModuleNotFoundError"),
                         (f"{HERE}:make_unicorn", "AttributeError"), (f"{HERE}:NOT_CALLABLE", "not a callable")]:
        with pytest.raises(ConfigError) as caught:
            open_pool(EnvConfig(module=module))
        message = str(caught.value)
        assert message.startswith("env.module: ") and module in message and says in message, message


def test_a_factory_that_raises_fails_the_try():
    async def body(pool):
        with pytest.raises(EnvironmentUnavailable) as caught:
            await pool.run_episode(answer, task="none")
        return caught.value, pool.metrics()

    error, metrics = with_pool(env("make_nothing", max_attempts=1), body)
    assert "the factory raised OSError: no environment today" in str(error)
    assert failures(metrics) == {"server_error": 1}


def test_counters_survive_a_checkpoint():
    STEP_FAILURES[0] = 1

    async def body(pool):
        await pool.run_episode(answer, task="one")
        await pool.run_episode(answer, task="two")
        return pool.state_dict()

    state = with_pool(env("make_adder"), body)
    assert state == {"episodes": 2, "retries": 1, "failures": {"connect": 0, "timeout": 0, "server_error": 1,
                                                               "malformed": 0, "capacity": 0}}
    restored = EnvPool(env("make_adder"))
    restored.load_state_dict(state)
    metrics = restored.metrics()
    assert metrics["env/episodes"] == 2 and metrics["env/retries"] == 1 and failures(metrics) == {"server_error": 1}
    assert "env/turns_mean" not in metrics and "env/step_latency_p50" not in metrics  # windows are not state
    restored.load_state_dict(None)
    assert restored.state_dict() == state


@pytest.mark.parametrize("state, field", [
    ({"episodes": -1, "retries": 0, "failures": {}}, "'episodes'"),
    ({"episodes": 1, "failures": {}}, "'retries'"),
    ({"episodes": 1, "retries": 0, "failures": {"gremlins": 1}}, "'failures'"),
    ({"episodes": 1, "retries": 0, "failures": {"timeout": 1.5}}, "'timeout'"),
])
def test_a_bad_state_is_refused_naming_the_field(state, field):
    pool = EnvPool(env("make_adder"))
    with pytest.raises(ValueError, match=field):
        pool.load_state_dict(state)
    assert pool.state_dict()["episodes"] == 0  # nothing half-restored


def test_episodes_need_a_started_pool():
    pool = open_pool(env("make_adder"))
    with pytest.raises(RuntimeError, match="start"):
        asyncio.run(pool.run_episode(answer, task="early"))


def test_env_loop_runs_coroutines_from_threads_and_reraises():
    loop = EnvLoop("test-loop")
    try:
        async def where_and_double(x: int) -> tuple[str, int]:
            await asyncio.sleep(0)
            return threading.current_thread().name, 2 * x

        assert loop.run(where_and_double(21)) == ("test-loop", 42)

        async def fails():
            raise LookupError("from the loop")

        with pytest.raises(LookupError, match="from the loop"):
            loop.run(fails())

        cancelled = threading.Event()

        async def forever():
            try:
                await asyncio.Event().wait()
            finally:
                cancelled.set()

        with pytest.raises(TimeoutError, match="did not finish within 0.05 s"):
            loop.run(forever(), timeout=0.05)
        assert cancelled.wait(10)
        # concurrent callers share the loop
        results: list[int] = []
        threads = [threading.Thread(target=lambda i=i: results.append(loop.run(where_and_double(i))[1]))
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(results) == [0, 2, 4, 6]
    finally:
        loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.run(where_and_double(1))
    loop.close()  # twice is fine


def test_env_loop_close_cancels_what_still_runs():
    loop = EnvLoop()
    started, cancelled = threading.Event(), threading.Event()

    async def background():
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async def spawn():
        return asyncio.get_running_loop().create_task(background())

    loop.run(spawn())
    assert started.wait(10)
    deadline = time.monotonic() + 10
    loop.close()
    assert cancelled.is_set() and time.monotonic() < deadline


def test_metrics_taken_mid_episode_lose_no_later_call():
    async def body(pool):
        async def play(session):
            first = await session.reset(seed=4)
            during = pool.metrics()  # the reset's latency is in this window; the step's must be in the next
            a, b = first.observation["text"].removesuffix("=").split("+")
            await session.step(str(int(a) + int(b)))
            return during

        during = await pool.run_episode(play, task="mid")
        return during, pool.metrics()

    during, after = with_pool(env("make_adder"), body)
    assert "env/step_latency_p50" in during and "env/turns_mean" not in during
    assert "env/step_latency_p50" in after and after["env/turns_mean"] == 1.0


def test_failures_of_one_burst_back_a_replica_off_once() -> None:
    """16 episodes in flight on one replica fail together (a bad task): the cooldown is 0.5 s, not 30."""
    from relaytrain.envs.pool import BACKOFF_FIRST_S, _Replica

    replica = _Replica("http://env:1")
    for _ in range(16):
        replica.cool_down(100.0)
    assert replica.failures_in_row == 1 and replica.cooldown_until == 100.0 + BACKOFF_FIRST_S
    replica.cool_down(100.0 + BACKOFF_FIRST_S)  # a failure after the cooldown ended: the next one doubles
    assert replica.failures_in_row == 2 and replica.cooldown_until == 100.0 + 3 * BACKOFF_FIRST_S
