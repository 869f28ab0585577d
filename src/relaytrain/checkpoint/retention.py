"""Checkpoint retention: which steps to keep, decided once for output folders and stores alike.

``steps_to_keep`` is the rule (pure: steps in, steps out); ``prune`` applies it to a local
output folder. The worker's uploader and ``relay prune`` apply it to a store's steps. Every
caller validates ``keep_last`` / ``keep_every`` with ``check_retention``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from relaytrain.checkpoint._fs import remove_tree
from relaytrain.checkpoint.commit import find_latest_valid
from relaytrain.checkpoint.layout import list_checkpoints, step_dir_name

log = logging.getLogger(__name__)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_retention(keep_last: int, keep_every: int | None, *, allow_zero: bool = True) -> None:
    """Raise ValueError, naming the field and the value, unless ``keep_last`` is an integer
    >= 0 (>= 1 without ``allow_zero``) and ``keep_every`` is None or an integer >= 1.

    ``allow_zero=False`` is for callers where the newest checkpoint is kept anyway, so
    ``keep_last=0`` would silently mean 1 (``CheckpointManager``, ``prune_store``).
    """
    least = 0 if allow_zero else 1
    if not _is_int(keep_last) or keep_last < least:
        raise ValueError(f"keep_last must be an integer >= {least}, got {keep_last!r}")
    if keep_every is not None and (not _is_int(keep_every) or keep_every < 1):
        raise ValueError(f"keep_every must be an integer >= 1 or None, got {keep_every!r}")


def steps_to_keep(steps: Iterable[int], keep_last: int, keep_every: int | None = None,
                  protect: Iterable[int] = ()) -> list[int]:
    """The steps of ``steps`` to keep, ascending and without duplicates: the ``keep_last``
    highest, every one divisible by ``keep_every``, and every one in ``protect`` (the newest
    durable or valid checkpoint, the best by some metric). ``steps`` may be unsorted and hold
    duplicates; a protected step that is not in ``steps`` is not added.
    ValueError (see ``check_retention``) for a bad ``keep_last`` or ``keep_every``."""
    check_retention(keep_last, keep_every)
    ordered = sorted(set(steps))
    keep = set(ordered[-keep_last:]) if keep_last else set()
    keep.update(protect)
    if keep_every is not None:
        keep.update(step for step in ordered if step % keep_every == 0)
    return [step for step in ordered if step in keep]


def prune(output_dir: str | os.PathLike[str], keep_last: int, keep_every: int | None = None,
          protect: Iterable[int] = (), *, newest_valid: int | None = None) -> list[int]:
    """Delete old checkpoints in ``output_dir`` and return the removed steps, ascending.

    Kept: ``steps_to_keep`` of the committed steps, with the newest valid checkpoint (found
    with ``find_latest_valid`` unless the caller passes ``newest_valid``) always protected.
    Deletion renames to a temporary first, so no half-deleted ``step_*`` is ever visible.
    """
    check_retention(keep_last, keep_every)
    out = Path(output_dir)
    steps = list_checkpoints(out)
    if not steps:
        return []
    if newest_valid is None:
        newest_valid = find_latest_valid(out).step
    guarded = {*protect, *(() if newest_valid is None else (newest_valid,))}
    keep = set(steps_to_keep(steps, keep_last, keep_every, guarded))
    removed = [step for step in steps if step not in keep]
    for step in removed:
        remove_tree(out / step_dir_name(step))
        log.info("pruned checkpoint %s", out / step_dir_name(step))
    return removed
