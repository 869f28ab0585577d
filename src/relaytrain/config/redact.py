"""Secrets in what a run file says: a value whose key names a secret is never shown (the
``relay report`` page, the dashboard). The rule is on the key, wherever it sits in the tree."""

from __future__ import annotations

from typing import Any

SECRET_NAME_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
"""A key containing any of these (in any case) holds a secret."""
REDACTED = "[redacted]"


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return any(part in upper for part in SECRET_NAME_PARTS)


def redact_secrets(data: Any) -> Any:
    """A copy of ``data`` (dicts, lists, scalars) with the value of every secret-named key replaced."""
    if isinstance(data, dict):
        return {k: REDACTED if is_secret_name(str(k)) else redact_secrets(v) for k, v in data.items()}
    if isinstance(data, list):
        return [redact_secrets(v) for v in data]
    return data
