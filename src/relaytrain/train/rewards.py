"""Reward functions for GRPO: the built-ins and any ``module:function`` the user names.

A reward function has the signature ``fn(prompts, completions, **kwargs) -> list[float | None]``:
``prompts`` and ``completions`` are lists of strings of one length, and every keyword argument is a
column of the dataset (for example ``answer``) repeated once per completion, plus ``template``
(the prompt template's name, once per completion). ``None`` means "no opinion on this completion":
it is left out of the group statistics. A function may be ``async``; it is then run with asyncio,
concurrently with the other asynchronous rewards of the same step.

Built-ins:

- ``correctness``: 1.0 when the completion's answer equals the record's ``answer``, else 0.0. The
  answer is read as evaluation reads it (``templates.extract_answer``): the text inside the first
  ``<answer>…</answer>`` for the ``r1``/``deepseek`` templates (a completion without those tags
  scores 0.0), else the whole completion; both sides are whitespace-trimmed and NFC-normalised.
- ``keyword_match``: the fraction of the record's ``keywords`` (a string or list of strings) found
  in the completion, case-insensitively; ``None`` for a record without keywords.
- ``strict_format``: 1.0 when the completion is exactly one ``<think>…</think><answer>…</answer>``
  (the r1 template's target), nothing before or after; a single newline is allowed inside and
  between the tags and at the end (the DeepSeek-R1 layout), and no tag may nest. A prompt that
  already ends in ``<think>`` counts as the completion's opening tag.

Usage::

    rewards = load_rewards(config.trainer.rewards)
    scores = score_completions(rewards, prompts, completions, answer=answers, template=templates)
    scores.total  # weighted sum per completion, None where every function said None
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import math
import re
import sys
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relaytrain.config import RewardSpec
from relaytrain.errors import ConfigError
from relaytrain.train import templates

RewardFunction = Callable[..., Any]
"""``(prompts, completions, **kwargs) -> list[float | None]``, or a coroutine function returning that."""

R1_TEMPLATES = frozenset({"r1", "deepseek"})
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NO_TAG = r"(?:(?!</?think>|</?answer>).)*"
_STRICT_R1_RE = re.compile(rf"<think>\n?{_NO_TAG}\n?</think>\n?<answer>\n?{_NO_TAG}\n?</answer>\n?", re.DOTALL)


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


def extract_answer(completion: str, template: str = "generic") -> str | None:
    """The answer a completion gives, NFC-normalised and trimmed, as evaluation reads it.

    For the r1/deepseek templates that is the first ``<answer>…</answer>`` content, and a completion
    without a complete pair of tags gives no answer (None); for other templates the whole text.
    """
    if template in R1_TEMPLATES and not _ANSWER_RE.search(completion):
        return None
    return _normalise(templates.extract_answer(unicodedata.normalize("NFC", completion), template))


def _column(kwargs: dict[str, Any], name: str, n: int, reward: str) -> list[Any]:
    if name not in kwargs:
        raise ConfigError(f"reward {reward!r} needs a {name!r} column in the dataset; it has none")
    values = kwargs[name]
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != n:
        raise ConfigError(f"reward {reward!r}: column {name!r} must hold one value per completion ({n})")
    return list(values)


def _templates(kwargs: dict[str, Any], n: int) -> list[str]:
    values = kwargs.get("template")
    if values is None:
        return ["generic"] * n
    if isinstance(values, str):
        return [values] * n
    return list(values)


def correctness(prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> list[float | None]:
    """1.0 when the extracted answer equals the record's ``answer`` (trimmed, NFC), else 0.0."""
    n = len(completions)
    answers = _column(kwargs, "answer", n, "correctness")
    scores: list[float | None] = []
    for completion, answer, template in zip(completions, answers, _templates(kwargs, n), strict=True):
        if answer is None:
            scores.append(None)
            continue
        given = extract_answer(completion, template)
        scores.append(1.0 if given is not None and given == _normalise(str(answer)) else 0.0)
    return scores


def keyword_match(prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> list[float | None]:
    """The fraction of the record's ``keywords`` present in the completion (case-insensitive)."""
    n = len(completions)
    keyword_rows = _column(kwargs, "keywords", n, "keyword_match")
    scores: list[float | None] = []
    for completion, keywords in zip(completions, keyword_rows, strict=True):
        if isinstance(keywords, str):
            keywords = [keywords]
        keywords = [k for k in (keywords or []) if k and k.strip()]
        if not keywords:
            scores.append(None)
            continue
        text = unicodedata.normalize("NFC", completion).casefold()
        found = sum(1 for k in keywords if _normalise(k).casefold() in text)
        scores.append(found / len(keywords))
    return scores


def strict_format(prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> list[float | None]:
    """1.0 when the completion follows the r1 format exactly, else 0.0."""
    scores: list[float | None] = []
    for prompt, completion in zip(prompts, completions, strict=True):
        text = completion
        for opening in ("<think>\n", "<think>"):
            if prompt.endswith(opening) and not completion.startswith("<think>"):
                text = opening + completion
                break
        scores.append(1.0 if _STRICT_R1_RE.fullmatch(text) else 0.0)
    return scores


BUILTIN_REWARDS: dict[str, RewardFunction] = {
    "correctness": correctness,
    "keyword_match": keyword_match,
    "strict_format": strict_format,
}


@dataclass(frozen=True)
class Reward:
    """A loaded reward function with its name (as the user wrote it) and weight."""

    name: str
    weight: float
    function: RewardFunction

    @property
    def is_async(self) -> bool:
        """Whether calling the function gives a coroutine."""
        return inspect.iscoroutinefunction(self.function)


def _import_module(module_name: str, reward_name: str) -> Any:
    if module_name.endswith(".py"):
        path = Path(module_name).expanduser()
        if not path.is_file():
            raise ConfigError(f"reward function {reward_name!r} cannot be imported: no file {path}")
        unique = f"relaytrain_reward_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(unique, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"reward function {reward_name!r} cannot be imported: {path} is not a module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[unique] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[unique]
            raise ConfigError(f"reward function {reward_name!r} cannot be imported: {exc!r}") from exc
        return module
    try:
        return importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is a permanent config error
        raise ConfigError(f"reward function {reward_name!r} cannot be imported: {exc!r}") from exc


def load_reward(spec: RewardSpec) -> Reward:
    """Resolve one reward spec: a built-in name, ``module:function`` or ``path/to/file.py:function``.

    Raises ConfigError naming the function when it cannot be imported or is not callable.
    """
    name = spec.name.strip()
    if name in BUILTIN_REWARDS:
        return Reward(name=name, weight=spec.weight, function=BUILTIN_REWARDS[name])
    module_name, sep, attribute = name.rpartition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(
            f"reward function {name!r} is unknown: give one of {', '.join(sorted(BUILTIN_REWARDS))} or module:function"
        )
    module = _import_module(module_name, name)
    function: Any = module
    for part in attribute.split("."):
        if not hasattr(function, part):
            raise ConfigError(f"reward function {name!r} cannot be imported: {module_name} has no {attribute!r}")
        function = getattr(function, part)
    if not callable(function):
        raise ConfigError(f"reward function {name!r} is not callable")
    return Reward(name=name, weight=spec.weight, function=function)


def load_rewards(specs: Sequence[RewardSpec]) -> list[Reward]:
    """Resolve every reward spec; raises ConfigError on the first that cannot be imported. (None is
    fine: a run with ``env:`` may be scored by its environment alone; the run file's validation says
    when one is needed.)"""
    rewards = [load_reward(spec) for spec in specs]
    names = [r.name for r in rewards]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"trainer.rewards: {', '.join(duplicates)} named more than once")
    return rewards


@dataclass(frozen=True)
class RewardScores:
    """The scores of one batch of completions."""

    per_function: dict[str, list[float | None]]
    """Unweighted scores per reward name, None where the function had no opinion."""
    total: list[float | None]
    """Weighted sum over the functions that scored each completion; None where none did."""


def _check_scores(name: str, values: Any, n: int) -> list[float | None]:
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != n:
        got = f"{type(values).__name__} of length {len(values)}" if isinstance(values, Sequence) else repr(values)
        raise ConfigError(f"reward function {name!r} must return a list of {n} floats or None (got {got[:80]})")
    checked: list[float | None] = []
    for value in values:
        if value is None:
            checked.append(None)
        elif isinstance(value, int | float) or hasattr(value, "__float__"):
            number = float(value)
            checked.append(None if math.isnan(number) else number)
        else:
            raise ConfigError(f"reward function {name!r} returned {value!r}, not a float or None")
    return checked


async def _gather(calls: list[Any]) -> list[Any]:
    return list(await asyncio.gather(*calls))


def score_completions(
    rewards: Sequence[Reward], prompts: Sequence[str], completions: Sequence[str], **columns: Any
) -> RewardScores:
    """Run every reward on the batch (async ones concurrently) and combine them by weight.

    ``columns`` are passed to every function as keyword arguments, one value per completion. A
    NaN score counts as None. Exceptions raised by a reward function propagate.
    """
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} completions")
    prompts, completions = list(prompts), list(completions)
    raw: dict[str, Any] = {}
    pending: dict[str, Any] = {}
    for reward in rewards:
        result = reward.function(prompts, completions, **columns)
        if inspect.isawaitable(result):
            pending[reward.name] = result
        else:
            raw[reward.name] = result
    if pending:
        for name, value in zip(pending, asyncio.run(_gather(list(pending.values()))), strict=True):
            raw[name] = value
    per_function = {r.name: _check_scores(r.name, raw[r.name], n) for r in rewards}
    total: list[float | None] = []
    for i in range(n):
        parts = [r.weight * s for r in rewards if (s := per_function[r.name][i]) is not None]
        total.append(sum(parts) if parts else None)
    return RewardScores(per_function=per_function, total=total)
