"""An episode on an environment written in Python and run in this process (``env.module =
"pkg.mod:factory"``): what lets a user start without a server, and what the tests compare the
wire against.

The factory is imported once and called once per episode. The object it returns has
``reset(**kwargs)`` and ``step(action)``, as an openenv ``Environment`` has (openenv itself is not
imported: the object is duck-typed). The calls run synchronously on the event loop's thread, so
episodes interleave the same way on every run with the same seeds. Like openenv's server:

- reset is given only the keyword arguments its signature names (all of them if it takes ``**kwargs``);
- when ``step``'s ``action`` parameter is annotated with a pydantic model, the action dict is
  validated into it (invalid → ``EnvironmentRejected``), otherwise the dict itself is passed;
- a returned pydantic observation (``model_dump``) becomes ``{"observation": <fields less reward,
  done, metadata>, "reward": ..., "done": ...}``; a dict must already have that shape.

An exception in reset or step is a ``SERVER_ERROR``. A call cannot be cut short: one that took
longer than its timeout fails as ``TIMEOUT`` when it returns.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import typing
from collections.abc import Callable
from typing import Any

from relaytrain.config import EnvConfig
from relaytrain.errors import ConfigError

from .session import CallRecorder, EpisodeFailed, FailureKind, _Session, describe

log = logging.getLogger(__name__)

_NOT_OBSERVATION_FIELDS = {"reward", "done", "metadata"}
"""What openenv's ``serialize_observation`` leaves out of the observation's fields."""


def load_factory(module: str) -> Callable[[], Any]:
    """The factory named by ``env.module`` (``pkg.mod:function``); a ``ConfigError`` naming the field
    when it cannot be imported or is not callable."""
    path, _, name = module.partition(":")
    try:
        factory = getattr(importlib.import_module(path), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"env.module: cannot load {module!r}: {type(exc).__name__}: {exc}") from exc
    if not callable(factory):
        raise ConfigError(f"env.module: {module!r} is a {type(factory).__name__}, not a callable factory")
    return factory


class InProcessSession(_Session):
    """An episode on ``factory()``, called when the session opens; ``where`` is ``module:<env.module>``."""

    def __init__(self, where: str, task: str, config: EnvConfig, factory: Callable[[], Any],
                 on_call: CallRecorder | None = None) -> None:
        super().__init__(where, task, config, on_call)
        self._factory = factory
        self._env: Any = None

    async def open(self) -> None:
        """Make the episode's environment (a factory that raises is a ``SERVER_ERROR``)."""
        try:
            self._env = self._factory()
        except Exception as exc:  # noqa: BLE001 - the user's factory failed: this episode's failure, retried
            raise EpisodeFailed(FailureKind.SERVER_ERROR, self.where, f"the factory raised {describe(exc)}") from exc

    async def close(self) -> None:
        """Close the environment if it has ``close()`` (a failure there is logged: the episode is over)."""
        env, self._env = self._env, None
        close = getattr(env, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # noqa: BLE001 - the episode's result stands; the user's close() is reported
                log.warning("%s: the environment's close() raised", self.where, exc_info=True)

    async def _call(self, op: str, data: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        if self._env is None:
            raise RuntimeError(f"{op} on a session that is not open")
        if op == "reset":
            call, args, kwargs = self._env.reset, (), _accepted_kwargs(self._env.reset, data)
        else:
            call, args, kwargs = self._env.step, (self._action(data),), {}
        try:
            returned = call(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the environment failed this episode: retried elsewhere
            message = describe(exc)
            raise EpisodeFailed(FailureKind.SERVER_ERROR, self.where, f"{op} raised {message}",
                                reset_refusal=message if op == "reset" else None) from exc
        return _wire_shape(returned, self.where)

    def _action(self, data: dict[str, Any]) -> Any:
        model = _action_model(type(self._env))
        if model is None:
            return data
        try:
            return model.model_validate(data)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise self._rejected("step", f"the action does not fit {model.__name__}: {exc}") from exc


_ACTION_MODELS: dict[type, Any] = {}


def _action_model(env_type: type) -> Any:
    """The pydantic model ``step``'s ``action`` parameter is annotated with, or None (looked up once per class)."""
    if env_type not in _ACTION_MODELS:
        step = env_type.step
        try:
            hints = typing.get_type_hints(step)
        except (NameError, TypeError):  # an annotation that does not resolve: read it as written
            hints = {}
        parameters = list(inspect.signature(step).parameters.values())
        action = next((p for p in parameters if p.name == "action"), parameters[1] if len(parameters) > 1 else None)
        annotation = hints.get(action.name, action.annotation) if action is not None else None
        is_model = inspect.isclass(annotation) and hasattr(annotation, "model_validate")
        _ACTION_MODELS[env_type] = annotation if is_model else None
    return _ACTION_MODELS[env_type]


def _accepted_kwargs(reset: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` less those ``reset`` does not name (all of them if it takes ``**kwargs``)."""
    parameters = inspect.signature(reset).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in parameters}


def _wire_shape(returned: Any, where: str) -> dict[str, Any]:
    """What openenv's server would send for ``returned``: its ``data`` of an observation reply."""
    if callable(getattr(returned, "model_dump", None)):
        fields = returned.model_dump()
        if not isinstance(fields, dict):
            raise EpisodeFailed(FailureKind.MALFORMED, where, f"model_dump() gave {type(fields).__name__}")
        observation = {k: v for k, v in fields.items() if k not in _NOT_OBSERVATION_FIELDS}
        return {"observation": observation, "reward": fields.get("reward"), "done": fields.get("done")}
    if isinstance(returned, dict):
        return returned
    raise EpisodeFailed(FailureKind.MALFORMED, where, f"the environment returned a {type(returned).__name__}, "
                        "not an observation (a pydantic model, or a dict with observation, reward and done)")
