"""Label matching: which workers (or hosts) may serve which runs."""

from __future__ import annotations

from collections.abc import Mapping


def labels_match(wanted: Mapping[str, str], offered: Mapping[str, str]) -> bool:
    """A worker serves a run when it carries every label the run asks for, with the same value."""
    return all(offered.get(key) == value for key, value in wanted.items())
