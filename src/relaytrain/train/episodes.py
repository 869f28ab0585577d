"""Multi-turn episodes of a GRPO run against environments (DESIGN §11, docs/environments.md).

An episode: reset the environment with the group's task → its observation is rendered into the
context → the policy writes an action (one turn, up to ``max_new_tokens``, ending at EOS) → the
environment steps on the action's text → its observation is appended → … until the environment says
done or ``env.max_turns`` turns were taken. The episode is one row of the GRPO batch: the group's
prompt, then every token after it (observations and actions in order), with a mask that is 1 only
on the policy's own tokens, so environment tokens are read but never trained.

A group is G episodes of one task (same reset arguments). Episodes run concurrently on an asyncio
loop (``env.concurrency`` at once), so environment latency overlaps; the policy's turns are batched:
the batcher samples once every live episode is waiting for the policy or for its environment, so
with an in-process environment the batches, and so the episodes, are the same on every run (exact
resume). Turn ``t`` of completion ``k`` of the prompt at position ``p`` draws the uniforms of
``(seed, step, key(p, k, t), 0)``: a retried episode replays the same actions.

An environment that fails (down, hung, 5xx, garbage) costs that episode: the pool retries it from the
start, elsewhere (``relaytrain.envs``); only completed episodes are returned, never a reward 0 for a
failure. An observation the template cannot render is garbage too.

Public API: ``Episode``, ``Turn``, ``Policy`` (the sampling handle), ``PromptGroup``,
``EpisodeRunner`` (``play_groups``, ``metrics``, ``state_dict``, ``close``), ``render_observation``,
``episode_reward``, ``episodes_to_batch``, ``turn_key``, ``load_generate_hook``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relaytrain.config import EnvConfig
from relaytrain.envs import EnvLoop, EpisodeFailed, FailureKind, StepResult, open_pool
from relaytrain.errors import ConfigError

if TYPE_CHECKING:
    from relaytrain.train.sampling import SampledBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Turn:
    """One policy turn: the sampled tokens (EOS included when reached), their sampling log-probs."""

    token_ids: list[int]
    logps: list[float]
    finished: bool
    """The turn ended with EOS (not cut at ``max_new_tokens``)."""


@dataclass
class Episode:
    """One completed episode, as the GRPO batch takes it: every token after the group's prompt."""

    token_ids: list[int] = field(default_factory=list)
    action_mask: list[int] = field(default_factory=list)
    """1 on the policy's tokens (trained), 0 on the environment's (read only)."""
    logps: list[float] = field(default_factory=list)
    """Sampling log-probs of the policy's tokens, 0 on the environment's."""
    reward: float | None = None
    """The environment's reward (``env.reward``: the last step's or the sum), None when it gave none."""
    done: bool = False
    """The environment ended the episode (else it hit ``max_turns`` or the context length)."""
    turns: int = 0

    def add(self, token_ids: Sequence[int], *, policy: bool, logps: Sequence[float] | None = None) -> None:
        """Append tokens: the policy's (with their log-probs) or the environment's."""
        self.token_ids += list(token_ids)
        self.action_mask += [1 if policy else 0] * len(token_ids)
        self.logps += list(logps) if policy and logps is not None else [0.0] * len(token_ids)


@dataclass(frozen=True)
class PromptGroup:
    """What one group's episodes start from (the generate hook's first argument)."""

    position: int
    """The group's position in the data order (it seeds the sampling)."""
    prompt: str
    prompt_ids: list[int]
    task: dict[str, Any]
    """The reset arguments of the group's task (``seed`` and the record's ``reset`` fields)."""
    num_generations: int
    step: int
    """The 0-based step the episodes are sampled for."""


def turn_key(position: int, sample: int, turn: int) -> int:
    """The sampling key of one turn (a stable 63-bit integer)."""
    digest = hashlib.blake2b(f"episode:{position}:{sample}:{turn}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def render_observation(template: str | None, result: StepResult, where: str) -> str:
    """The observation as context text: ``template.format(**observation)``; without a template, the text of
    a one-field observation, else its JSON. An observation the template cannot render is malformed."""
    observation = result.observation
    if template is None:
        if len(observation) == 1:
            (value,) = observation.values()
            return value if isinstance(value, str) else json.dumps(value)
        return json.dumps(observation, sort_keys=True)
    try:
        return template.format(**observation)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        message = f"observation {sorted(observation)} does not fit env.observation_template: {exc!r}"
        raise EpisodeFailed(FailureKind.MALFORMED, where, message) from exc


def episode_reward(rewards: Sequence[float | None], mode: str) -> float | None:
    """The episode's environment reward: the last step's (``final``) or the sum of those given (``sum``)."""
    if mode == "final":
        return rewards[-1] if rewards else None
    given = [r for r in rewards if r is not None]
    return float(sum(given)) if given else None


SETTLE_ROUNDS = 2
"""Loop iterations with nothing changing before a batch is sampled: episodes just started or just
answered get to reach their next wait first (with an in-process environment, all of them)."""
STRAGGLER_SHARE = 0.5
"""While some episodes still wait on their environment, a batch waits for them up to this share of
the last batch's sampling time (a turn sampled alone costs nearly as much as a batch of them)."""
STRAGGLER_MAX_S = 0.1


class _Batcher:
    """Batches the policy's turns across live episodes, deterministically.

    A batch is sampled when every live episode is waiting, for the policy or for its environment,
    and the loop has settled (``SETTLE_ROUNDS``): with an in-process environment (which never
    waits) each batch is exactly the live episodes' turns, whatever the timing."""

    def __init__(self, sample: Callable[[list[list[int]], list[int]], list[Turn]], executor: ThreadPoolExecutor):
        self._sample, self._executor = sample, executor
        self.live = 0
        self.in_env = 0
        self._pending: list[tuple[list[int], int, asyncio.Future]] = []
        self._busy = False
        self._settling = False
        self._changes = 0
        self._first_pending = 0.0
        self._last_batch_s = 0.0
        self._timer: asyncio.TimerHandle | None = None
        """The straggler wait in progress, if any."""

    @contextlib.asynccontextmanager
    async def episode(self) -> AsyncIterator[None]:
        self.live += 1
        self._changed()
        try:
            yield
        finally:
            self.live -= 1
            self._changed()

    @contextlib.asynccontextmanager
    async def environment(self) -> AsyncIterator[None]:
        self.in_env += 1
        self._changed()
        try:
            yield
        finally:
            self.in_env -= 1
            self._changed()

    async def generate(self, context: list[int], key: int) -> Turn:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._pending:
            self._first_pending = loop.time()
        self._pending.append((context, key, future))
        self._changed()
        return await future

    def _ready(self) -> bool:
        return not self._busy and bool(self._pending) and len(self._pending) + self.in_env >= self.live

    def _changed(self) -> None:
        self._changes += 1
        if self._timer is not None and not self.in_env:  # the stragglers are back: no reason to wait longer
            self._timer.cancel()
            self._timer, self._settling = None, False
        if self._ready() and not self._settling:
            self._settling = True
            asyncio.get_running_loop().call_soon(self._settle, self._changes, 0)

    def _settle(self, seen: int, quiet: int) -> None:
        self._settling, self._timer = False, None
        if not self._ready():  # an episode is still running: its next wait calls _changed again
            return
        loop = asyncio.get_running_loop()
        if self._changes != seen or quiet < SETTLE_ROUNDS:
            self._settling = True
            loop.call_soon(self._settle, self._changes, 0 if self._changes != seen else quiet + 1)
            return
        if self.in_env:  # episodes about to come back from their environment: worth a short wait
            wait = self._first_pending + min(STRAGGLER_MAX_S, STRAGGLER_SHARE * self._last_batch_s) - loop.time()
            if wait > 0:
                self._settling = True
                self._timer = loop.call_later(wait, self._settle, self._changes, SETTLE_ROUNDS)
                return
        batch, self._pending = self._pending, []
        self._busy = True
        asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[tuple[list[int], int, asyncio.Future]]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            turns = await loop.run_in_executor(
                self._executor, self._sample, [c for c, _, _ in batch], [k for _, k, _ in batch])
        except BaseException as exc:  # every waiting episode sees the sampler's error
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, _, future), turn in zip(batch, turns, strict=True):
                if not future.done():
                    future.set_result(turn)
        finally:
            self._last_batch_s = loop.time() - started
            self._busy = False
            self._changed()


class Policy:
    """The policy's sampling handle on the episode loop (also what a generate hook is given).

    ``await policy.generate(context_ids, key)`` samples one turn after ``context_ids`` with the weights
    of the step being sampled; ``key`` (``turn_key``) fixes its randomness. ``tokenizer``, ``max_new_tokens``
    and ``max_length`` (the model's context) are there to build contexts."""

    def __init__(self, batcher: _Batcher, tokenizer: Any, max_new_tokens: int, max_length: int) -> None:
        self._batcher = batcher
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.max_length = max_length

    async def generate(self, context_ids: list[int], key: int) -> Turn:
        return await self._batcher.generate(list(context_ids), key)


class _Tracked:
    """An environment session whose calls the batcher sees (a live episode waiting on its environment)."""

    def __init__(self, session: Any, batcher: _Batcher) -> None:
        self._session, self._batcher = session, batcher
        self.where = session.where

    async def reset(self, **kwargs: Any) -> StepResult:
        async with self._batcher.environment():
            return await self._session.reset(**kwargs)

    async def step(self, text: str) -> StepResult:
        async with self._batcher.environment():
            return await self._session.step(text)


class EnvClient:
    """The environments as a generate hook sees them: ``await env.run_episode(play, task=...)`` runs
    ``play(session)`` on a healthy environment, retried from the start elsewhere when it fails."""

    def __init__(self, pool: Any, batcher: _Batcher) -> None:
        self.pool, self._batcher = pool, batcher

    async def run_episode(self, play: Callable[[Any], Awaitable[Any]], *, task: str) -> Any:
        async def tracked(session: Any) -> Any:
            async with self._batcher.episode():
                return await play(_Tracked(session, self._batcher))

        return await self.pool.run_episode(tracked, task=task)


async def play_episode(session: Any, policy: Policy, group: PromptGroup, sample: int, config: EnvConfig) -> Episode:
    """The built-in episode loop (see the module's docstring) on one session."""
    tokenizer = policy.tokenizer
    episode = Episode()

    def observe(result: StepResult) -> None:
        text = render_observation(config.observation_template, result, session.where)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: config.max_observation_tokens]
        episode.add(ids, policy=False)

    result = await session.reset(**group.task)
    observe(result)
    rewards: list[float | None] = []
    episode.done = result.done
    while not episode.done and episode.turns < config.max_turns:
        if len(group.prompt_ids) + len(episode.token_ids) + policy.max_new_tokens > policy.max_length:
            break  # no room for another turn in the model's context: the episode ends unfinished
        turn = await policy.generate(group.prompt_ids + episode.token_ids, turn_key(group.position, sample,
                                                                                    episode.turns))
        episode.add(turn.token_ids, policy=True, logps=turn.logps)
        episode.turns += 1
        result = await session.step(tokenizer.decode(turn.token_ids, skip_special_tokens=True))
        rewards.append(result.reward)
        episode.done = result.done
        if not episode.done and episode.turns < config.max_turns:
            observe(result)
    episode.reward = episode_reward(rewards, config.reward)
    return episode


def load_generate_hook(path: str) -> Callable[..., Any]:
    """The function ``rollout.generate`` names (``pkg.mod:function``); ConfigError naming the field."""
    module_name, _, name = path.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except ImportError as exc:
        raise ConfigError(f"rollout.generate: cannot import {module_name!r}: {exc}") from exc
    except AttributeError as exc:
        raise ConfigError(f"rollout.generate: {module_name!r} has no {name!r}") from exc
    if not callable(function):
        raise ConfigError(f"rollout.generate: {path!r} is not a function")
    return function


class EpisodeRunner:
    """The environments, the episode loop and the policy's batched turns of one GRPO session."""

    def __init__(self, config: EnvConfig | None, *, sample: Callable[[list[list[int]], list[int]], list[Turn]],
                 tokenizer: Any, max_new_tokens: int, max_length: int, hook: str | None = None) -> None:
        self.config = config
        self.loop = EnvLoop("relay-episodes")
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="relay-policy")
        self._batcher = _Batcher(sample, self._executor)
        self.policy = Policy(self._batcher, tokenizer, max_new_tokens, max_length)
        self.hook = load_generate_hook(hook) if hook is not None else None
        self.pool: Any = None
        if config is not None:
            self.pool = open_pool(config)
            try:
                self.loop.run(self.pool.start())
            except BaseException:
                self.close()
                raise
        self.env = EnvClient(self.pool, self._batcher) if self.pool is not None else None

    def play_groups(self, groups: list[PromptGroup]) -> list[list[Episode]]:
        """The G episodes of every group, all completed (failures retried by the pool)."""
        return self.loop.run(self._play_groups(groups))

    async def _play_groups(self, groups: list[PromptGroup]) -> list[list[Episode]]:
        if self.hook is not None:
            return await _all_or_none([self._hooked(group) for group in groups])
        assert self.env is not None and self.config is not None
        config = self.config

        async def one(group: PromptGroup, k: int) -> Episode:
            async def play(session: Any) -> Episode:
                return await play_episode(session, self.policy, group, k, config)

            return await self.env.run_episode(play, task=_task_label(group.task))

        flat = await _all_or_none([one(g, k) for g in groups for k in range(g.num_generations)])
        n = groups[0].num_generations if groups else 0
        return [list(flat[i * n : i * n + n]) for i in range(len(groups))]

    async def _hooked(self, group: PromptGroup) -> list[Episode]:
        assert self.hook is not None
        async with self._batcher.episode() if self.env is None else contextlib.nullcontext():
            result = self.hook(group, self.policy, self.env)
            if inspect.isawaitable(result):
                result = await result
        episodes = list(result)
        if len(episodes) != group.num_generations or not all(isinstance(e, Episode) for e in episodes):
            raise TypeError(f"rollout.generate must return {group.num_generations} Episode objects for a group, "
                            f"got {type(result).__name__} of {len(episodes)}")
        for e in episodes:
            if not (len(e.token_ids) == len(e.action_mask) == len(e.logps)):
                raise ValueError("rollout.generate: an episode's token_ids, action_mask and logps differ in length")
        return episodes

    def metrics(self) -> dict[str, float]:
        return self.pool.metrics() if self.pool is not None else {}

    def state_dict(self) -> dict[str, Any]:
        return self.pool.state_dict() if self.pool is not None else {}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.pool is not None:
            self.pool.load_state_dict(state)

    def close(self) -> None:
        if self.pool is not None:
            with contextlib.suppress(Exception):
                self.loop.run(self.pool.aclose(), timeout=30)
        self.loop.close()
        self._executor.shutdown(wait=True)


async def _all_or_none(coroutines: list[Awaitable[Any]]) -> list[Any]:
    """Every result, in order; on the first error the others are cancelled (the run is failing: its
    other episodes must not hold the trainer up), then the error is raised."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _task_label(task: dict[str, Any]) -> str:
    return json.dumps(task, sort_keys=True, default=str)


def episodes_to_batch(prompt_ids: list[list[int]], episodes: list[list[Episode]], num_generations: int,
                      pad_id: int) -> SampledBatch:
    """A ``SampledBatch`` of the groups' episodes: prompts left-padded, episodes right-padded; the
    completion mask covers every real token (the attention), the action mask only the policy's."""
    import torch

    from relaytrain.train.sampling import SampledBatch, left_pad

    rows = [(p, e) for p, group in zip(prompt_ids, episodes, strict=True) for e in group]
    prompts, prompt_mask = left_pad([p for p, _ in rows], pad_id)
    width = max(1, max(len(e.token_ids) for _, e in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    logps = torch.zeros((len(rows), width), dtype=torch.float32)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    action = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (_, e) in enumerate(rows):
        n = len(e.token_ids)
        ids[row, :n] = torch.tensor(e.token_ids, dtype=torch.long)
        logps[row, :n] = torch.tensor(e.logps, dtype=torch.float32)
        mask[row, :n] = 1
        action[row, :n] = torch.tensor(e.action_mask, dtype=torch.long)
    truncated = torch.tensor([not e.done for _, e in rows], dtype=torch.bool)
    return SampledBatch(prompt_ids=prompts, prompt_mask=prompt_mask, completion_ids=ids, completion_mask=mask,
                        truncated=truncated, sampling_logps=logps, num_generations=num_generations,
                        action_mask=action)
