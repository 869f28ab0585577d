"""Secrets a run needs are referenced in the run file, never pasted into it (docs/security.md).

The commander keeps a run file as it was submitted: in its database, in ``relay status --json``,
in the worker's ``run_config.json``. So a value that looks secret — by the one rule of
:mod:`.redact` (a key named like KEY, TOKEN, SECRET, PASSWORD, …; credentials inside a URL) —
is refused at validation, and a command trainer's environment says where the worker finds it:

    trainer:
      env:
        WANDB_API_KEY: {from_worker_env: WANDB_API_KEY}   # read from the worker's own environment at start
        MAX_TOKENS: {value: "512", secret: false}         # named like a secret, but it is not one
        WANDB_MODE: offline                               # anything else: a plain string

A reference is resolved on the worker when the trainer starts (:func:`resolve_env`); the
resolved value goes to the trainer's environment and nowhere else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from relaytrain.errors import WorkerEnvMissing

from .redact import SECRET_NAME_PARTS, is_secret_name, redact_secrets

ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
"""A POSIX shell's environment variable name (what a trainer's env and a worker's env file may name)."""
ENV_NAME_RE = re.compile(ENV_NAME_PATTERN)


class FromWorkerEnv(BaseModel):
    """A value the worker reads from its own environment when it starts the trainer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    from_worker_env: str = Field(..., description="The worker's environment variable that holds the value.",
                                 json_schema_extra={"pattern": ENV_NAME_PATTERN})

    @field_validator("from_worker_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        return check_env_name(value)


class NotSecret(BaseModel):
    """An inline value whose name looks secret but that the run file's author says is not."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: str = Field(..., description="The value, stored and shown in clear.")
    secret: Literal[False] = Field(..., description="Must be false: a secret is referenced, never inline.")


EnvValue = str | FromWorkerEnv | NotSecret
"""One value of a trainer's ``env``: a string, a reference to the worker's environment, or a
string marked not secret."""


def check_env_name(name: str) -> str:
    """``name`` if it is a valid environment variable name, else ValueError."""
    if not ENV_NAME_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not an environment variable name (letters, digits and '_', "
                         "not starting with a digit)")
    return name


def env_value(value: Any) -> Any:
    """Read one ``env`` value before the type check, so that a wrong one is told what the three
    spellings are (rather than one error per member of the union)."""
    if isinstance(value, str | FromWorkerEnv | NotSecret):
        return value
    if isinstance(value, Mapping) and set(value) == {"from_worker_env"} and isinstance(value["from_worker_env"], str):
        return FromWorkerEnv(from_worker_env=check_env_name(value["from_worker_env"]))
    if isinstance(value, Mapping) and "value" in value and set(value) <= {"value", "secret"}:
        if value.get("secret") is not False:
            raise ValueError("an inline value needs 'secret: false'; a secret is referenced as "
                             "{from_worker_env: NAME}, never written in the run file")
        if not isinstance(value["value"], str):
            raise ValueError("value: must be a string (quote a number: \"8\")")
        return NotSecret(value=value["value"], secret=False)
    raise ValueError("must be a string (quote a number: \"8\"), {from_worker_env: NAME} or "
                     "{value: TEXT, secret: false}")


def refuse_inline_env_secrets(env: Mapping[str, EnvValue]) -> None:
    """ValueError naming every variable of ``env`` that is named like a secret and written in
    clear, with the two ways out."""
    for name, value in env.items():
        check_env_name(name)
        if isinstance(value, str) and value and is_secret_name(name):
            raise ValueError(
                f"{name} looks like a secret (its name contains {_secret_part(name)}) and the run file is stored "
                f"and shown in clear: reference it as {name}: {{from_worker_env: {name}}} (read from the worker's "
                f"environment when the trainer starts), or if it is not a secret write "
                f"{name}: {{value: ..., secret: false}}")


def inline_secrets(data: Any, path: tuple[str, ...] = ()) -> list[str]:
    """The dotted paths in ``data`` (a run file as JSON) where a secret sits in clear: what
    :func:`redact_secrets` would hide, less the two markers above (a reference holds no secret;
    ``secret: false`` says there is none)."""
    if isinstance(data, Mapping):
        if _is_marker(data):
            return []
        found = []
        for key, value in data.items():
            here = (*path, str(key))
            if is_secret_name(str(key)) and _holds_text(value):
                found.append(".".join(here))
            else:
                found += inline_secrets(value, here)
        return found
    if isinstance(data, list):
        return [p for i, item in enumerate(data) for p in inline_secrets(item, (*path, str(i)))]
    if isinstance(data, str) and redact_secrets(data) != data:
        return [".".join(path)]
    return []


def inline_secrets_message(paths: list[str]) -> str:
    """The refusal of a field with secrets in clear at ``paths`` (inside it; '' is the field itself)."""
    where = ", ".join(p for p in paths if p)
    return (f"{where + ' holds' if where else 'holds'} what looks like a secret (a name containing one of "
            f"{', '.join(SECRET_NAME_PARTS)}, or credentials inside a URL), and the run file is stored and shown in "
            "clear. Keep secrets out of the run file: a command trainer's env takes {from_worker_env: NAME} "
            "(resolved on the worker), stores read their credentials from the worker's environment "
            "(docs/security.md)")


def resolve_env(env: Mapping[str, EnvValue], environ: Mapping[str, str], *, worker_id: str) -> dict[str, str]:
    """The trainer's extra environment with every reference read from ``environ`` (the worker's);
    :class:`WorkerEnvMissing` naming the variables and the worker when some are not set."""
    missing = [f"{name} (from_worker_env: {value.from_worker_env})" for name, value in env.items()
               if isinstance(value, FromWorkerEnv) and value.from_worker_env not in environ]
    if missing:
        raise WorkerEnvMissing(f"worker {worker_id} has no {', no '.join(missing)} in its environment: "
                               "set it where the worker starts (its env file, the stack's workers[].env or "
                               "env_file, or the shell)")
    return {name: environ[value.from_worker_env] if isinstance(value, FromWorkerEnv)
            else value.value if isinstance(value, NotSecret) else value
            for name, value in env.items()}


def _secret_part(name: str) -> str:
    upper = name.upper()
    return next(part for part in SECRET_NAME_PARTS if part in upper)


def _is_marker(data: Mapping[str, Any]) -> bool:
    keys = set(data)
    return keys == {"from_worker_env"} or (keys == {"value", "secret"} and data["secret"] is False)


def _holds_text(value: Any) -> bool:
    """A secret-named value says something: a non-empty string, or a list or mapping holding one
    (numbers, booleans, null and markers say nothing)."""
    if isinstance(value, str):
        return bool(value)
    if isinstance(value, Mapping):
        return not _is_marker(value) and any(_holds_text(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_text(v) for v in value)
    return False
