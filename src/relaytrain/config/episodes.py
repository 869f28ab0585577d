"""The run-file sections of a GRPO run that plays episodes or shares generation: ``rollout:``
(the elastic rollout pool, DESIGN §11, docs/rollout.md) and ``env:`` (multi-turn environments,
docs/environments.md). Re-exported by ``relaytrain.config``."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ._base import _Model, check_function_path


class RolloutConfig(_Model):
    """The elastic rollout pool of a GRPO run (DESIGN §11, docs/rollout.md): the trainer hosts a
    rollout manager and rollout workers generate groups for it; with none attached the trainer
    generates itself."""

    sync_every: int = Field(1, ge=1, le=10**6, description="Publish the policy's weights every N optimizer steps.")
    max_staleness: int = Field(
        2, ge=0, le=10**6, description="Train no group sampled more than this many weight versions ago."
    )
    lease_s: float = Field(60.0, gt=0, le=86_400, description="Seconds a rollout worker may hold a group.")
    max_importance_weight: float = Field(
        2.0, ge=1.0, le=1e6, description="Cap of the per-token off-policy weight π_old/π_behaviour (truncated IS)."
    )
    port: int = Field(0, ge=0, le=65535, description="Port the manager listens on; 0: any free port.")
    labels: dict[str, str] = Field(default_factory=dict, max_length=64,
                                   description="Labels a rollout worker must offer to serve this run.")
    workers: int = Field(0, ge=0, le=64, description="The SSH autoscaler keeps this many rollout workers for the run "
                         "on its hosts' free GPUs while the run is running (0: none).")
    generate: str | None = Field(
        None, description="Your own rollout logic, 'pkg.mod:function' (docs/environments.md): called with a prompt "
        "group, the policy's sampling handle and the environment client; returns the group's episodes.")

    @field_validator("generate")
    @classmethod
    def _generate_function(cls, value: str | None) -> str | None:
        return check_function_path(value)


class EnvConfig(_Model):
    """The environments of a multi-turn GRPO run (DESIGN §11, docs/environments.md): OpenEnv servers
    (``urls``) or a Python factory run in-process (``module``). An episode alternates policy turns
    and observations; an environment that fails costs that episode, retried, never trained as 0."""

    protocol: Literal["openenv"] = Field("openenv", description="The wire protocol of the servers.")
    urls: list[str] = Field(default_factory=list, max_length=256,
                            description="Replicas of one environment (http:// or https://); episodes spread over them.")
    module: str | None = Field(None, description="An in-process environment: 'pkg.mod:factory', called once per "
                               "episode, returning an object with reset(**kwargs) and step(action).")
    max_turns: int = Field(4, ge=1, le=1000, description="Policy turns per episode at most.")
    turn_timeout_s: float = Field(30.0, gt=0, le=86_400, description="Seconds one reset or step may take.")
    episode_timeout_s: float = Field(300.0, gt=0, le=86_400,
                                     description="Seconds of environment time one episode may take in all.")
    concurrency: int = Field(8, ge=1, le=4096, description="Episodes in flight at once (environment sessions open).")
    observation_template: str | None = Field(
        None, description="A Python format over the observation's fields, e.g. '{feedback}\\n'; unset: the text "
        "of a one-field observation, else its JSON.")
    action_field: str = Field("message", min_length=1, description="The action's field the policy's text goes in.")
    reward: Literal["final", "sum"] = Field("sum", description="The episode's environment reward: the last step's "
                                            "or the sum over steps.")
    reward_weight: float = Field(1.0, description="Weight of the environment's reward in the total.")
    reset: dict[str, Any] = Field(default_factory=dict, description="Extra arguments of every reset.")
    tasks: int = Field(10_000, ge=1, le=10**9, description="Without data: the reset seeds 0 … tasks-1, shuffled.")
    max_attempts: int = Field(5, ge=1, le=100, description="Tries of one episode before the run fails.")
    down_timeout_s: float = Field(300.0, gt=0, le=86_400, description="The run fails as transient when every "
                                  "environment stays unreachable this long.")
    health_interval_s: float = Field(2.0, gt=0, le=3600, description="Seconds between health checks of a replica "
                                     "that failed.")
    max_observation_tokens: int = Field(256, ge=1, le=1 << 20,
                                        description="Tokens of one rendered observation at most (cut at the end).")

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", url):
                raise ValueError(f"{url!r} is not an http:// or https:// URL")
        value = [url.rstrip("/") for url in value]
        if len(set(value)) != len(value):
            raise ValueError("names a URL twice")
        return value

    @field_validator("module")
    @classmethod
    def _module_function(cls, value: str | None) -> str | None:
        return check_function_path(value)

    @field_validator("observation_template")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        if value is not None:
            import string

            try:
                list(string.Formatter().parse(value))
            except ValueError as exc:
                raise ValueError(f"not a valid format string: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _one_source(self) -> EnvConfig:
        if bool(self.urls) == (self.module is not None):
            raise ValueError("give exactly one of 'urls' (OpenEnv servers) or 'module' (in-process)")
        return self
