"""The lines a trainer appends to ``RELAY_PROGRESS_FILE``, written by the trainer helper
(``Contract``) and read by the worker's tailer — one schema, here:

    {"step": 120, "metrics": {"loss": 0.71}}                      progress
    {"event": "checkpoint", "step": 120, "path": "/abs/step_…"}   a committed checkpoint
    {"event": "file", "path": "/abs/f", "run_id": "r", "name": "evals/x.json"}
                                                                 store this file (the worker does)
    {"event": "rollout", "url": "http://…", "secret": "…", "version": 3, "pool": [...]}
                                                                 the rollout manager (DESIGN §11)
    {"event": "<name>", ...}                                      any other event

Metric values are finite numbers; anything else is dropped when read (a NaN is written as
null so the line stays valid JSON).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CHECKPOINT_EVENT = "checkpoint"
FILE_EVENT = "file"
ROLLOUT_EVENT = "rollout"
"""``{"event": "rollout", "url": …, "secret": …, "version": …, "pool": [...]}``: where the
trainer's rollout manager is and who is attached (the worker forwards it to the commander)."""
MAX_METRICS = 256
MAX_METRIC_NAME = 128
METRIC_NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"
"""A metric name holds no control character (PostgreSQL cannot store NUL in text)."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Progress:
    step: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class Event:
    event: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def checkpoint(self) -> tuple[int, str] | None:
        """``(step, path)`` for a well-formed checkpoint event, else None."""
        step, path = self.fields.get("step"), self.fields.get("path")
        if self.event == CHECKPOINT_EVENT and isinstance(step, int) and isinstance(path, str):
            return step, path
        return None

    @property
    def rollout(self) -> dict[str, Any] | None:
        """The fields of a rollout event that names a URL and a secret, else None."""
        if self.event == ROLLOUT_EVENT and isinstance(self.fields.get("url"), str) and isinstance(
                self.fields.get("secret"), str):
            return self.fields
        return None

    @property
    def file(self) -> tuple[str, str, str] | None:
        """``(path, run_id, name)`` for a well-formed file event, else None."""
        values = tuple(self.fields.get(k) for k in ("path", "run_id", "name"))
        if self.event == FILE_EVENT and all(isinstance(v, str) and v for v in values):
            return values  # type: ignore[return-value]
        return None


def progress_line(step: int, metrics: Mapping[str, Any]) -> str:
    clean = {str(k): (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    return _dump({"step": int(step), "metrics": clean})


def event_line(event: str, **fields: Any) -> str:
    return _dump({"event": event, **fields})


def _dump(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"


def parse_line(line: str | bytes) -> Progress | Event | None:
    """One line of the progress file, or None if it is none of the above (the caller warns)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    if "event" in record:
        name = record.pop("event")
        return Event(name, record) if isinstance(name, str) else None
    step = record.get("step")
    if isinstance(step, int) and not isinstance(step, bool) and step >= 0:
        return Progress(step, clean_metrics(record.get("metrics")))
    return None


def clean_metrics(raw: Any) -> dict[str, float]:
    """Finite numbers only, at most ``MAX_METRICS`` of them, names cut to ``MAX_METRIC_NAME``; a
    name with a control character (``METRIC_NAME_PATTERN``) is left out."""
    if not isinstance(raw, dict):
        return {}
    out = {}
    for name, value in list(raw.items())[:MAX_METRICS]:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        name = str(name)[:MAX_METRIC_NAME]
        if name and not _CONTROL.search(name):
            out[name] = float(value)
    return out
