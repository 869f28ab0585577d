"""Committing a written checkpoint and finding the newest valid one (retention: ``retention.py``).

Commit order, each step durable before the next: files (fsynced) -> manifest.json (written
last, fsynced) -> directories fsynced -> rename ``.tmp-step_N-*`` to ``step_N`` -> fsync of
the output directory -> ``latest`` replaced atomically. A crash anywhere leaves the previous
checkpoint valid and ``latest`` naming it (or the new one, once it is complete).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relaytrain.checkpoint._fs import TEMP_PREFIX, discard_on_error, fsync_tree, publish_dir
from relaytrain.checkpoint.layout import (
    MANIFEST_NAME,
    list_checkpoints,
    read_latest,
    step_dir_name,
    write_latest,
)
from relaytrain.checkpoint.manifest import FileEntry, verify, write_manifest
from relaytrain.errors import CheckpointError

log = logging.getLogger(__name__)


def commit_checkpoint_dir(tmp_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str], step: int,
                          epoch: int | None = None, metadata: Mapping[str, Any] | None = None,
                          *, known: Mapping[str, FileEntry] | None = None) -> Path:
    """Commit the fully written directory ``tmp_dir`` as the checkpoint of ``step`` in
    ``output_dir`` and return its final path (``<output_dir>/step_<N>``).

    Writes the manifest (hashing every file; ``known`` skips files already hashed, and
    already fsynced, by the caller), fsyncs files and directories, renames into place
    (replacing an existing checkpoint of the same step safely), then updates ``latest``.
    ``tmp_dir`` must be on the same file system as ``output_dir``; use ``make_temp_dir``.
    If anything fails, a ``tmp_dir`` named ``.tmp-*`` is deleted and CheckpointError raised.
    """
    tmp = Path(tmp_dir)
    out = Path(output_dir)
    target = out / f"step {step}"
    try:
        with discard_on_error(tmp) if tmp.name.startswith(TEMP_PREFIX) else nullcontext(tmp):
            target = out / step_dir_name(step)
            if not tmp.is_dir():
                raise CheckpointError(f"{tmp}: not a directory")
            write_manifest(tmp, step, epoch, metadata, known=known)
            fsync_tree(tmp, skip_files=frozenset(known or ()) | {MANIFEST_NAME})
            publish_dir(tmp, target)
    except OSError as exc:
        raise CheckpointError(f"committing {target.name} failed: {exc}") from exc
    try:
        write_latest(out, step)
    except OSError as exc:
        raise CheckpointError(f"{target.name} committed but updating latest failed: {exc}") from exc
    log.info("committed checkpoint %s", target)
    return target


@dataclass(frozen=True)
class LatestResult:
    """The outcome of ``find_latest_valid``."""

    path: Path | None
    """The newest valid checkpoint directory, or None if there is none."""
    step: int | None
    """Its step."""
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    """Newer checkpoints that were not used, each with the reason."""


def find_latest_valid(output_dir: str | os.PathLike[str]) -> LatestResult:
    """The newest valid checkpoint in ``output_dir``.

    ``latest`` is tried first; if it is missing, unreadable or names an invalid checkpoint,
    every committed step directory is verified, newest first, until one is valid. Committed
    directories newer than a valid ``latest`` (left by a crash between rename and ``latest``
    update, or by an abandoned run) are reported in ``skipped`` without being verified.
    """
    out = Path(output_dir)
    skipped: list[tuple[Path, str]] = []
    tried: set[int] = set()
    try:
        name = read_latest(out)
    except CheckpointError as exc:
        skipped.append((out / "latest", str(exc)))
        name = None
    steps = list_checkpoints(out)
    if name is not None:
        path = out / name
        check = verify(path)
        if check.ok:
            assert check.step is not None
            for newer in reversed(steps):
                if newer > check.step:
                    skipped.append((out / step_dir_name(newer),
                                    f"newer than {name}, which latest names; not used"))
            return LatestResult(path, check.step, skipped)
        skipped.append((path, f"named by latest: {check.reason}"))
        log.warning("checkpoint %s named by latest is invalid: %s", path, check.reason)
        tried.add(int(name.removeprefix("step_")))
    for step in reversed(steps):
        if step in tried:
            continue
        path = out / step_dir_name(step)
        check = verify(path)
        if check.ok:
            return LatestResult(path, step, skipped)
        skipped.append((path, check.reason or "invalid"))
        log.warning("skipping invalid checkpoint %s: %s", path, check.reason)
    return LatestResult(None, None, skipped)
