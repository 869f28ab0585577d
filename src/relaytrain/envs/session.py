"""One episode on one environment replica: the session interface, the reply rules of the OpenEnv
protocol, and how a failed call is classified.

A session is what ``play`` gets from :meth:`EnvPool.run_episode`: ``reset`` once, ``step`` until
done, then the pool closes it. Every reset and step is timed: one call may take
``env.turn_timeout_s``, the episode's calls ``env.episode_timeout_s`` in all; past either the
call fails as :attr:`FailureKind.TIMEOUT`. A failure that one more try elsewhere may cure raises
:class:`EpisodeFailed` (the pool retries the episode); a refusal no retry can cure (the server
calls the request invalid) raises :class:`~relaytrain.errors.EnvironmentRejected`.

The two implementations (:mod:`.websocket`, :mod:`.inprocess`) differ only in :meth:`_Session._call`;
the reply rules (:func:`parse_reply`) and the error codes (:data:`ERROR_CODES`) live here, once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from relaytrain.config import EnvConfig
from relaytrain.errors import EnvironmentRejected


@dataclass(frozen=True)
class StepResult:
    """What a reset or a step answered."""

    observation: dict[str, Any]
    """The observation's own fields (reward, done and metadata are not among them)."""
    reward: float | None
    done: bool


class FailureKind(StrEnum):
    """Why one try of an episode failed (the ``env/failures/<kind>`` counters)."""

    CONNECT = "connect"
    """Refused, reset or closed mid-episode, or the WebSocket handshake failed: the replica is marked down."""
    TIMEOUT = "timeout"
    """A call past ``turn_timeout_s``, or the episode past ``episode_timeout_s``."""
    SERVER_ERROR = "server_error"
    """The server said it failed (a 5xx handshake, an error in reset or step)."""
    MALFORMED = "malformed"
    """A reply that is not an OpenEnv observation."""
    CAPACITY = "capacity"
    """The replica has no room for another session: try another (not the environment's fault)."""


class EpisodeFailed(Exception):
    """One try of one episode failed; the pool retries the episode from scratch (a new session, a
    new ``play``). ``play`` may raise it too, for a reply it cannot use."""

    def __init__(self, kind: FailureKind, where: str, message: str, *, reset_refusal: str | None = None) -> None:
        super().__init__(f"{where}: {kind.value}: {message}")
        self.kind = FailureKind(kind)
        self.where = where
        self.message = message
        self.reset_refusal = reset_refusal
        """The environment's own message when it failed the episode's reset (the pool's rule: the same
        task's reset refused with the same message twice is a bad task)."""


class EnvSession(Protocol):
    """One episode on one replica. ``play`` calls :meth:`reset`, then :meth:`step` until it stops."""

    where: str
    """The replica: its URL, or ``module:pkg.mod:factory`` in-process."""
    turns: int
    """Steps taken so far."""
    env_seconds: float
    """Seconds spent waiting on the environment in this session (the episode timeout's measure)."""

    async def reset(self, **kwargs: Any) -> StepResult: ...

    async def step(self, text: str) -> StepResult: ...

    async def close(self) -> None: ...


ERROR_CODES: dict[str, FailureKind | None] = {
    "EXECUTION_ERROR": FailureKind.SERVER_ERROR,
    "SESSION_ERROR": FailureKind.SERVER_ERROR,
    "FACTORY_ERROR": FailureKind.SERVER_ERROR,
    "CAPACITY_REACHED": FailureKind.CAPACITY,
    "VALIDATION_ERROR": None,
    "INVALID_JSON": None,
    "UNKNOWN_TYPE": None,
}
"""An OpenEnv ``error`` reply's ``code`` → the failure it is; ``None``: the request is invalid, a
permanent refusal (:class:`~relaytrain.errors.EnvironmentRejected`). A code not listed is a
``SERVER_ERROR``."""


def parse_reply(reply: Any, where: str) -> StepResult:
    """The :class:`StepResult` of an OpenEnv reply's ``data`` (``{"observation": {...}, "reward":
    number|null, "done": bool}``); anything else raises :class:`EpisodeFailed` ``MALFORMED``."""
    if not isinstance(reply, dict):
        raise EpisodeFailed(FailureKind.MALFORMED, where, f"the reply's data is {type(reply).__name__}, not an object")
    observation = reply.get("observation")
    if not isinstance(observation, dict):
        raise EpisodeFailed(FailureKind.MALFORMED, where,
                            f"the observation is {type(observation).__name__}, not an object")
    reward = reply.get("reward")
    if reward is not None:
        if not isinstance(reward, int | float) or not math.isfinite(reward):
            raise EpisodeFailed(FailureKind.MALFORMED, where, f"the reward {reward!r} is not a finite number or null")
        reward = float(reward)
    done = reply.get("done")
    if not isinstance(done, bool):
        raise EpisodeFailed(FailureKind.MALFORMED, where, f"'done' is {done!r}, not true or false")
    return StepResult(observation=observation, reward=reward, done=done)


class _Session:
    """The timing, the timeouts and the turn count shared by both kinds of session. A subclass
    implements :meth:`_call` (one request, its reply's data) and :meth:`close`."""

    def __init__(self, where: str, task: str, config: EnvConfig, on_call: CallRecorder | None = None) -> None:
        self.where = where
        self.task = task
        self.turns = 0
        self.env_seconds = 0.0
        self._action_field = config.action_field
        self._reset_defaults = config.reset
        self._turn_timeout_s = config.turn_timeout_s
        self._episode_timeout_s = config.episode_timeout_s
        self._on_call = on_call

    async def reset(self, **kwargs: Any) -> StepResult:
        """Start the episode; ``kwargs`` (over ``env.reset``'s) go to the environment's reset (a seed, a task...)."""
        return await self._timed("reset", {**self._reset_defaults, **kwargs})

    async def step(self, text: str) -> StepResult:
        """Send the policy's ``text`` as the action's ``env.action_field``."""
        result = await self._timed("step", {self._action_field: text})
        self.turns += 1
        return result

    async def close(self) -> None:
        raise NotImplementedError

    async def _call(self, op: str, data: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one ``reset`` or ``step`` and return its reply's data; raise :class:`EpisodeFailed`
        or ``EnvironmentRejected`` for a failure (``timeout_s``: when to give up, as ``TIMEOUT``)."""
        raise NotImplementedError

    async def _timed(self, op: str, data: dict[str, Any]) -> StepResult:
        left = self._episode_timeout_s - self.env_seconds
        if left <= 0:
            raise EpisodeFailed(FailureKind.TIMEOUT, self.where,
                                f"the episode used its {self._episode_timeout_s:g} s of environment time")
        timeout_s = min(self._turn_timeout_s, left)
        started = time.monotonic()
        try:
            reply = await self._call(op, data, timeout_s)
        finally:
            elapsed = time.monotonic() - started
            self.env_seconds += elapsed
        if elapsed > timeout_s:  # an in-process call cannot be cut short: it is judged when it returns
            raise EpisodeFailed(FailureKind.TIMEOUT, self.where, self._timeout_message(op, timeout_s))
        result = parse_reply(reply, self.where)
        if self._on_call is not None:
            self._on_call(elapsed)
        return result

    def _timeout_message(self, op: str, timeout_s: float) -> str:
        if timeout_s < self._turn_timeout_s:
            return f"{op} ran past the episode's {self._episode_timeout_s:g} s of environment time"
        return f"{op} took longer than {timeout_s:g} s (env.turn_timeout_s)"

    def _rejected(self, op: str, message: str) -> EnvironmentRejected:
        return rejection(self.where, self.task, op, message)


def rejection(where: str, task: str, op: str, message: str) -> EnvironmentRejected:
    """The permanent error of a request the environment called invalid, naming it, the task and why."""
    return EnvironmentRejected(f"{where}: {op} of task {task} rejected: {message}")


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, for a failure's message."""
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


class CallRecorder(Protocol):
    """Told the seconds of each reset or step that answered (the pool's latency window)."""

    def __call__(self, seconds: float) -> None: ...
