"""Building an evaluation run (DESIGN §9): one builder and one run-id scheme, used by the
commander's automatic evaluation of durable checkpoints and by ``relay eval``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from relaytrain.config import EvalTrainer, RunConfig, parse_run_config

EVAL_FIELDS = ("dataset", "template", "metrics", "samples", "subset_frac", "max_new_tokens", "batch_size",
               "timeout_s")
"""The scoring settings an eval run takes from ``eval:`` of its source (or from ``relay eval``)."""
HANG_MARGIN_S = 60.0
"""One checkpoint is scored without progress lines: the hang watchdog waits its timeout and this."""
_MAX_ID = 127


def eval_run_id(source_run: str, tag: str) -> str:
    """``<source_run>-eval-<tag>``, the source cut so that the id stays within 127 characters."""
    return f"{source_run[:_MAX_ID - len('-eval-') - len(tag)]}-eval-{tag}"


def step_tag(step: int) -> str:
    """The tag of the automatic evaluation of one step: ``00000100``."""
    return f"{step:08d}"


def time_tag(now: float | None = None) -> str:
    """The tag of an evaluation asked by a person: ``20260101-120000`` (UTC)."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))


def build_eval_run(source: Mapping[str, Any], settings: Mapping[str, Any], *, steps: Any, tag: str,
                   inherit_retry: bool = False) -> RunConfig:
    """The eval run that scores ``source``'s durable checkpoints at ``steps`` (``all``, ``latest``
    or a list) with ``settings`` (:data:`EVAL_FIELDS`; missing ones take their defaults).

    ``source`` is the source run as the API or the store gives it (``run_id``, ``priority``,
    ``config``): the eval run has its priority and store. ``inherit_retry`` also gives it the
    source's retry policy (automatic evaluations do). An eval run asks for one GPU when its source
    asked for any (``resources.gpus >= 1``), and none otherwise. ConfigError if the result is invalid.
    """
    config: dict[str, Any] = {
        "run_id": eval_run_id(source["run_id"], tag),
        "kind": "eval",
        "priority": source["priority"],
        "store": source["config"]["store"],
        "hang_timeout_s": settings.get("timeout_s", EvalTrainer.model_fields["timeout_s"].default) + HANG_MARGIN_S,
        "trainer": {"source_run": source["run_id"], "steps": steps,
                    **{k: settings[k] for k in EVAL_FIELDS if k in settings}},
    }
    if (source["config"].get("resources") or {}).get("gpus", 0) >= 1:
        config["resources"] = {"gpus": 1}  # scored on a GPU, in bf16, as it was trained
    if inherit_retry:
        config["retry"] = source["config"]["retry"]
    return parse_run_config(config)
