"""A multi-turn tool-use task on openenv-core: add two numbers, with a calculator the model may call.

An episode (see README.md beside this file):

    reset(seed=7)           → text "431+254="                   (reward None, done False)
    step("calc 431+254")    → text "=685\\n"                     (reward 0.0, done False: a tool call)
    step("685")             → text ""                            (reward 1.0, done True: the answer)

Every character is one the tiny character-level model knows (digits, ASCII letters, punctuation,
space, newline). ``make_env`` is the in-process factory (``env: {module: "calculator_env:make_env"}``).

Faults, for tests and benchmarks, are read from the server process's environment when an
environment is made: ``CALC_STEP_DELAY_S`` (seconds slept before each step) and ``CALC_FAULT``, one of
``hang_step:<k>`` (step k of every session sleeps forever), ``crash_step:<k>`` (step k raises: the
client gets ``EXECUTION_ERROR``), ``exit_step:<k>`` (the server process exits at step k: killed
mid-episode) and ``malformed_step:<k>`` (step k's reply has a reward that is not a number). Steps
count from 1 in each session.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import Action, Observation, State

TASK = re.compile(r"^(\d{1,6})\+(\d{1,6})$")
"""A task given to reset: two numbers of up to 6 digits."""
TOOL_CALL = re.compile(r"^calc (\d+)([+\-*])(\d+)$")
"""A calculator call: ``calc <a><op><b>`` with op one of + - *."""
ANSWER = re.compile(r"^-?\d+$")
FAULTS = ("hang_step", "crash_step", "exit_step", "malformed_step")


class CalcAction(Action):
    """What the model said: a calculator call or its answer."""

    message: str


class CalcObservation(Observation):
    """What the model sees: the task after reset, the calculator's result after a call, nothing at the end."""

    text: str


class _GarbledObservation(CalcObservation):
    """An observation whose reward is a string: what ``malformed_step`` sends (an OpenEnv client must refuse it)."""

    reward: Any = None


@dataclass(frozen=True)
class Faults:
    """The fault knobs of one environment (see the module's docstring)."""

    step_delay_s: float = 0.0
    fault: str | None = None
    at_step: int = 0

    @classmethod
    def from_environ(cls, environ: dict[str, str] | os._Environ[str] = os.environ) -> Faults:
        delay_text = environ.get("CALC_STEP_DELAY_S", "0") or "0"
        try:
            delay = float(delay_text)
        except ValueError:
            raise ValueError(f"CALC_STEP_DELAY_S={delay_text!r} is not a number of seconds") from None
        if delay < 0:
            raise ValueError(f"CALC_STEP_DELAY_S={delay_text!r} must be ≥ 0")
        spec = environ.get("CALC_FAULT", "")
        if not spec:
            return cls(step_delay_s=delay)
        name, _, k = spec.partition(":")
        if name not in FAULTS or not k.isdigit() or int(k) < 1:
            raise ValueError(f"CALC_FAULT={spec!r} must be one of {', '.join(f + ':<k>' for f in FAULTS)} (k ≥ 1)")
        return cls(step_delay_s=delay, fault=name, at_step=int(k))


class CalculatorEnvironment(Environment[CalcAction, CalcObservation, State]):
    """One episode of ``a+b``; each WebSocket session gets its own (no state is shared)."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self, faults: Faults | None = None) -> None:
        super().__init__()
        self.faults = faults if faults is not None else Faults.from_environ()
        self._state = State()
        self._sum: int | None = None
        self._done = False

    def reset(self, seed: int | None = None, task: str | None = None, **_: Any) -> CalcObservation:
        """A new episode: ``task`` ("a+b") if given, else two 3-digit numbers drawn from ``seed``."""
        if task is not None:
            match = TASK.fullmatch(task)
            if match is None:
                raise ValueError(f"bad task {task!r}: expected a+b, two numbers of 1 to 6 digits")
            a, b = int(match[1]), int(match[2])
        else:
            rng = random.Random(seed)
            a, b = rng.randint(100, 999), rng.randint(100, 999)
        self._sum, self._done = a + b, False
        self._state = State(step_count=0)
        return CalcObservation(text=f"{a}+{b}=", reward=None, done=False)

    def step(self, action: CalcAction, timeout_s: float | None = None, **_: Any) -> CalcObservation:
        """A tool call answers ``=<result>\\n``; an integer ends the episode, reward 1.0 if it is the sum."""
        if self._sum is None or self._done:
            raise RuntimeError("step without an episode in progress: reset first")
        self._state.step_count += 1
        garbled = self._inject(self._state.step_count)
        message = action.message.strip()
        call = TOOL_CALL.fullmatch(message)
        if call is not None:
            a, op, b = int(call[1]), call[2], int(call[3])
            result = a + b if op == "+" else a - b if op == "-" else a * b
            observation = CalcObservation(text=f"={result}\n", reward=0.0, done=False)
        else:
            self._done = True
            correct = ANSWER.fullmatch(message) is not None and int(message) == self._sum
            observation = CalcObservation(text="", reward=1.0 if correct else 0.0, done=True)
        if garbled:
            return _GarbledObservation(text=observation.text, reward="garbled", done=observation.done)
        return observation

    @property
    def state(self) -> State:
        return self._state

    def _inject(self, step: int) -> bool:
        """Apply the knobs to step ``step``; True when its reply is to be garbled."""
        if self.faults.step_delay_s:
            time.sleep(self.faults.step_delay_s)
        if step != self.faults.at_step:
            return False
        if self.faults.fault == "hang_step":
            threading.Event().wait()  # forever: the client's turn timeout must cut it
        elif self.faults.fault == "crash_step":
            raise RuntimeError(f"injected crash at step {step}")
        elif self.faults.fault == "exit_step":
            os._exit(1)
        return self.faults.fault == "malformed_step"


def make_env() -> CalculatorEnvironment:
    """The in-process factory: a fresh environment per episode (faults from this process's environment)."""
    return CalculatorEnvironment()
