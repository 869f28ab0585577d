"""The environment pool: where each episode runs, and what a failed one costs (DESIGN §11).

Invariants:

- At most ``env.concurrency`` sessions are open at once, over every concurrent :meth:`EnvPool.run_episode`.
- An episode runs on a replica that is up and not cooling down; among those it prefers one this
  episode has not failed on, then the one with the fewest sessions open (round-robin on ties).
- A failed try (:class:`EpisodeFailed`) costs that try only: the replica cools down (0.5 s,
  doubling to 30 s, back to none after a success; a lost connection marks it down instead, until
  ``GET /health`` answers healthy again) and the episode starts again from scratch, a new session
  and a new ``play``, elsewhere if it can. It is never scored as a zero reward: its caller gets
  ``play``'s result of a try that completed, or an exception.
- What no retry can cure raises ``EnvironmentRejected`` at once (permanent): a request the server
  calls invalid, a handshake answered 4xx, an action schema without ``env.action_field``, or the
  same task's reset refused with the same message twice. What retries did not cure raises
  ``EnvironmentUnavailable`` (transient: the run is retried later): ``env.max_attempts`` failed
  tries of one episode, or every replica down for ``env.down_timeout_s`` in a row.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from relaytrain.config import EnvConfig
from relaytrain.errors import EnvironmentRejected, EnvironmentUnavailable

from .inprocess import InProcessSession, load_factory
from .session import EnvSession, EpisodeFailed, FailureKind, describe
from .websocket import WebSocketSession

log = logging.getLogger(__name__)

T = TypeVar("T")

BACKOFF_FIRST_S = 0.5
"""A replica's cooldown after its first failure in a row; it doubles with each further one."""
BACKOFF_MAX_S = 30.0
"""The longest cooldown."""
HEALTH_TIMEOUT_S = 10.0
"""The longest one ``GET /health`` or ``GET /schema`` may take (``env.turn_timeout_s`` if shorter)."""


@dataclass
class _Replica:
    """What the pool knows of one replica."""

    where: str
    up: bool = True
    open: int = 0
    """Sessions open on it now."""
    failures_in_row: int = 0
    cooldown_until: float = 0.0
    """Monotonic time before which it gets no episode."""
    last_error: str = ""

    def cool_down(self, now: float) -> None:
        """Back off after a failure; failures of tries that were in flight together (ending while it
        already cools down) count once, so a burst of concurrent episodes does not stretch the wait."""
        if now < self.cooldown_until:
            return
        self.failures_in_row += 1
        self.cooldown_until = now + min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self.failures_in_row - 1))


class _Remote:
    """OpenEnv servers: sessions over WebSocket, health over HTTP."""

    def __init__(self, config: EnvConfig) -> None:
        self.config = config
        self.places = list(config.urls)
        self._http: httpx.AsyncClient | None = None

    async def open(self, where: str, task: str, on_call: Callable[[float], None]) -> WebSocketSession:
        session = WebSocketSession(where, task, self.config, on_call)
        await session.open()
        return session

    async def check(self, url: str) -> str | None:
        """None when the server at ``url`` answers ``/health`` healthy and its action schema has
        ``env.action_field``; else why it is not up. A server that is not an OpenEnv server, or whose
        actions have no such field, raises ``EnvironmentRejected``."""
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=min(HEALTH_TIMEOUT_S, self.config.turn_timeout_s))
        try:
            health = await self._http.get(f"{url}/health")
            if health.status_code != 200:
                return f"GET /health answered {health.status_code}"
            status = _json(health).get("status")
            if status != "healthy":
                return f"GET /health says {status!r}, not 'healthy'"
            schema = await self._http.get(f"{url}/schema")
        except httpx.HTTPError as exc:
            return f"GET /health or /schema failed: {describe(exc)}"
        if schema.status_code >= 500:
            return f"GET /schema answered {schema.status_code}"
        if schema.status_code != 200:
            raise EnvironmentRejected(f"{url}: GET /schema answered {schema.status_code}: not an OpenEnv server?")
        action = _json(schema).get("action")
        properties = action.get("properties") if isinstance(action, dict) else None
        if not isinstance(properties, dict):
            raise EnvironmentRejected(f"{url}: GET /schema has no action schema with properties: "
                                      "not an OpenEnv server?")
        field = self.config.action_field
        if field not in properties:
            raise EnvironmentRejected(f"{url}: the action has no field {field!r} (env.action_field); "
                                      f"its fields: {', '.join(sorted(properties)) or 'none'}")
        return None

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


class _InProcess:
    """An environment factory called in this process, one environment per episode."""

    def __init__(self, config: EnvConfig) -> None:
        assert config.module is not None
        self.config = config
        self._factory = load_factory(config.module)
        self.places = [f"module:{config.module}"]

    async def open(self, where: str, task: str, on_call: Callable[[float], None]) -> InProcessSession:
        session = InProcessSession(where, task, self.config, self._factory, on_call)
        await session.open()
        return session

    async def check(self, where: str) -> str | None:
        return None

    async def aclose(self) -> None:
        return None


class EnvPool:
    """Runs episodes on the replicas of one environment (see the module's invariants). Use it from one
    event loop: ``await start()``, ``await run_episode(...)`` any number of times concurrently,
    ``await aclose()``. :class:`~relaytrain.envs.EnvLoop` runs one for synchronous code."""

    def __init__(self, config: EnvConfig) -> None:
        self.config = config
        self._backend: _Remote | _InProcess = _InProcess(config) if config.module is not None else _Remote(config)
        self._replicas = [_Replica(where) for where in self._backend.places]
        self._slots = asyncio.Semaphore(config.concurrency)
        self._changed = asyncio.Event()
        self._next = 0  # round-robin cursor
        self._all_down_since: float | None = None
        self._broken: BaseException | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._episodes = 0
        self._retries = 0
        self._failures = dict.fromkeys(FailureKind, 0)
        self._window_turns: list[int] = []
        self._window_latencies: list[float] = []

    @property
    def urls(self) -> list[str]:
        """The replicas: the servers' URLs, or ``["module:<env.module>"]`` in-process."""
        return [r.where for r in self._replicas]

    async def start(self) -> None:
        """Check every replica (``/health`` and the action schema); those down are marked down, the
        watcher probes them every ``env.health_interval_s``. Raises ``EnvironmentRejected`` for a
        server that is not an OpenEnv server or whose actions lack ``env.action_field``."""
        if self._watcher is not None:
            raise RuntimeError("the pool is already started")
        problems = await asyncio.gather(*(self._backend.check(r.where) for r in self._replicas))
        now = time.monotonic()
        for replica, problem in zip(self._replicas, problems, strict=True):
            replica.up, replica.last_error = problem is None, problem or ""
            if problem is not None:
                log.warning("environment %s is down at start: %s", replica.where, problem)
        if not any(r.up for r in self._replicas):
            self._all_down_since = now
        self._watcher = asyncio.create_task(self._watch(), name="relay-envs-health")
        self._watcher.add_done_callback(self._watcher_ended)

    async def run_episode(self, play: Callable[[EnvSession], Awaitable[T]], *, task: str) -> T:
        """``play(session)`` on a replica, retried from scratch on :class:`EpisodeFailed`, until one try
        completes; its result. ``task`` names the episode in errors. Anything else ``play`` raises
        propagates at once (the session closed first)."""
        if self._watcher is None:
            raise RuntimeError("start() the pool before running episodes")
        failed_on: list[str] = []
        attempts = 0
        refusals: set[str] = set()
        while True:
            async with self._slots:
                replica = await self._take_replica(set(failed_on))
                replica.open += 1
                try:
                    result, session = await self._try(replica, play, task)
                except EpisodeFailed as exc:
                    failure = exc
                else:
                    self._succeeded(replica, session)
                    return result
                finally:
                    replica.open -= 1
                    self._notify()
            self._failed(replica, failure)
            if failure.reset_refusal is not None:
                if failure.reset_refusal in refusals:
                    raise EnvironmentRejected(f"{failure.where}: reset of task {task} refused: "
                                              f"{failure.reset_refusal}") from failure
                refusals.add(failure.reset_refusal)
            if failure.kind is not FailureKind.CAPACITY:  # a full replica is not the environment failing
                attempts += 1
            failed_on.append(replica.where)
            if attempts >= self.config.max_attempts:
                tried = ", ".join(dict.fromkeys(failed_on))
                raise EnvironmentUnavailable(f"the episode of task {task} failed {attempts} times "
                                             f"(env.max_attempts) on {tried}; last error: {failure}") from failure
            self._retries += 1
            log.info("episode of task %s: try failed (%s), retrying", task, failure)

    def metrics(self) -> dict[str, float]:
        """The counters (cumulative), ``env/replicas_up``, and over what ended since the previous call:
        ``env/turns_mean`` (steps per completed episode) and ``env/step_latency_p50``/``p95`` (seconds of
        the resets and steps that answered), each omitted when there was none. Safe to call from
        another thread than the loop's (a sample landing during the call may be lost)."""
        turns, self._window_turns = self._window_turns, []  # swapped first: the loop's thread may append meanwhile
        latencies, self._window_latencies = self._window_latencies, []
        out: dict[str, float] = {"env/episodes": float(self._episodes), "env/retries": float(self._retries)}
        out.update({f"env/failures/{kind.value}": float(n) for kind, n in self._failures.items()})
        out["env/replicas_up"] = float(sum(r.up for r in self._replicas))
        if turns:
            out["env/turns_mean"] = statistics.fmean(turns)
        if latencies:
            out["env/step_latency_p50"] = _quantile(latencies, 0.50)
            out["env/step_latency_p95"] = _quantile(latencies, 0.95)
        return out

    def state_dict(self) -> dict[str, Any]:
        """The cumulative counters, for the trainer's checkpoint."""
        return {"episodes": self._episodes, "retries": self._retries,
                "failures": {kind.value: n for kind, n in self._failures.items()}}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict`'s counters (``None``: a fresh run, nothing to restore)."""
        if state is None:
            return
        episodes, retries = _count(state, "episodes"), _count(state, "retries")
        failures = state.get("failures")
        if not isinstance(failures, dict) or set(failures) - {k.value for k in FailureKind}:
            raise ValueError(f"env pool state: 'failures' must map {[k.value for k in FailureKind]} to counts, "
                             f"got {failures!r}")
        counts = {kind: _count(failures, kind.value, default=0) for kind in FailureKind}
        self._episodes, self._retries, self._failures = episodes, retries, counts

    async def aclose(self) -> None:
        """Stop the health watcher and close the HTTP client (episodes should be over)."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        await self._backend.aclose()

    # -- one try ---------------------------------------------------------------------------------

    async def _try(self, replica: _Replica, play: Callable[[EnvSession], Awaitable[T]],
                   task: str) -> tuple[T, EnvSession]:
        session = await self._backend.open(replica.where, task, self._record_call)
        try:
            return await play(session), session
        finally:
            await session.close()

    def _record_call(self, seconds: float) -> None:
        self._window_latencies.append(seconds)

    def _succeeded(self, replica: _Replica, session: EnvSession) -> None:
        self._episodes += 1
        self._window_turns.append(session.turns)
        replica.failures_in_row, replica.cooldown_until = 0, 0.0

    def _failed(self, replica: _Replica, failure: EpisodeFailed) -> None:
        self._failures[failure.kind] += 1
        replica.last_error = str(failure)
        replica.cool_down(time.monotonic())
        if failure.kind is FailureKind.CONNECT and replica.up:
            log.warning("environment %s is down: %s", replica.where, failure.message)
            replica.up = False
            if not any(r.up for r in self._replicas):
                self._all_down_since = time.monotonic()
        self._notify()

    # -- choosing a replica ------------------------------------------------------------------------

    async def _take_replica(self, avoid: set[str]) -> _Replica:
        """A replica to run on now, waiting while none is ready; ``EnvironmentUnavailable`` when all
        have been down for ``env.down_timeout_s``."""
        while True:
            if self._broken is not None:
                raise self._broken
            now = time.monotonic()
            up = [r for r in self._replicas if r.up]
            ready = [r for r in up if r.cooldown_until <= now]
            choice = [r for r in ready if r.where not in avoid] or ready
            if choice:
                return self._least_loaded(choice)
            if up:
                wake = min(r.cooldown_until for r in up)
            else:
                assert self._all_down_since is not None
                wake = self._all_down_since + self.config.down_timeout_s
                if now >= wake:
                    raise self._unreachable()
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), timeout=wake - now)
            except TimeoutError:
                pass

    def _least_loaded(self, choice: list[_Replica]) -> _Replica:
        n = len(self._replicas)
        index = {id(r): i for i, r in enumerate(self._replicas)}
        best = min(choice, key=lambda r: (r.open, (index[id(r)] - self._next) % n))
        self._next = (index[id(best)] + 1) % n
        return best

    def _unreachable(self) -> EnvironmentUnavailable:
        last = next((r.last_error for r in reversed(self._replicas) if r.last_error), "none")
        return EnvironmentUnavailable(f"environments unreachable for {self.config.down_timeout_s:g} s: "
                                      f"{', '.join(self.urls)} (last error: {last})")

    def _notify(self) -> None:
        """Wake every :meth:`_take_replica` that waits (a replica freed, failed or came back)."""
        self._changed.set()
        self._changed = asyncio.Event()

    # -- the health watcher ------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Every ``env.health_interval_s``, probe the replicas that are down; mark up those that answer."""
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            down = [r for r in self._replicas if not r.up]
            if not down:
                continue
            problems = await asyncio.gather(*(self._backend.check(r.where) for r in down))
            for replica, problem in zip(down, problems, strict=True):
                if problem is None:
                    log.info("environment %s is back", replica.where)
                    replica.up, replica.cooldown_until = True, 0.0
                    self._all_down_since = None
                    self._notify()
                else:
                    replica.last_error = problem

    def _watcher_ended(self, task: asyncio.Task[None]) -> None:
        """A watcher that stopped on its own (a replica came back rejected, or a bug) breaks the pool:
        every episode raises what stopped it, rather than wait on replicas no one probes."""
        if task.cancelled():
            return
        self._broken = task.exception() or RuntimeError("the environment health watcher stopped")
        log.error("environment health watcher stopped: %s", self._broken)
        self._notify()


def open_pool(config: EnvConfig) -> EnvPool:
    """The pool of ``config``'s environment: its OpenEnv servers (``env.urls``) or its in-process
    factory (``env.module``, imported now: a ``ConfigError`` naming ``env.module`` if it cannot
    be). Not started: ``await pool.start()`` on the loop that runs the episodes."""
    return EnvPool(config)


def _quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (linear between the closest ranks)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _count(state: dict[str, Any], key: str, default: int | None = None) -> int:
    value = state.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"env pool state: {key!r} must be a count (an int ≥ 0), got {value!r}")
    return value
