"""What every run-file model shares: frozen, no unknown fields; and the ``pkg.mod:function`` check."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_function_path(value: str | None) -> str | None:
    """``value`` if it names a function as ``package.module:function`` (or is None), else ValueError."""
    if value is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
        raise ValueError(f"{value!r} must read 'package.module:function'")
    return value
