"""Where checkpoints live in an output directory, and the names of everything there.

```
<output_dir>/
  step_00000200/            a committed checkpoint (its manifest.json is written last)
  .tmp-step_00000400-1a2b/  a checkpoint being written: invisible to every reader
  latest                    "step_00000200\\n", replaced atomically
```

This module is the one place that knows these names.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from relaytrain.checkpoint._fs import TEMP_PREFIX, atomic_write_bytes, remove_tree, temp_sibling
from relaytrain.errors import CheckpointError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
"""The file written last into a checkpoint; without it the checkpoint does not exist."""

LATEST_NAME = "latest"
"""The file in the output directory that names the newest committed checkpoint."""

FORMAT_VERSION = 2
"""The manifest format this code writes (2: per-chunk BLAKE3, ``manifest.py``); ``verify``
accepts only the versions it knows (1 and 2)."""

_STEP_RE = re.compile(r"step_(\d{8,})")


def step_dir_name(step: int) -> str:
    """The directory name of the checkpoint at ``step``: ``step_00000200``."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    return f"step_{step:08d}"


def parse_step(name: str) -> int | None:
    """The step of a checkpoint directory name (``step_00000200`` -> 200), else None."""
    match = _STEP_RE.fullmatch(name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[int]:
    """Steps of the committed checkpoint directories in ``output_dir``, ascending.

    Committed means renamed into place: temporaries (``.tmp-*``) are never listed. A listed
    directory is not necessarily valid; ``verify`` says that.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    steps = []
    for entry in os.scandir(root):
        step = parse_step(entry.name)
        if step is not None and entry.is_dir(follow_symlinks=False):
            steps.append(step)
    return sorted(steps)


def make_temp_dir(output_dir: str | os.PathLike[str], step: int) -> Path:
    """Create and return a fresh ``.tmp-step_<N>-<random>`` directory in ``output_dir``
    (creating ``output_dir`` if needed), to be filled and then committed."""
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = temp_sibling(root / step_dir_name(step), step_dir_name(step))
    path.mkdir()
    return path


def clean_temp(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove every temporary (``.tmp-*``) left in ``output_dir`` by an interrupted save,
    replace or delete, and return what was removed.

    Call it only when nothing is writing into ``output_dir`` (for example before a trainer
    starts); ``CheckpointManager`` calls it when it is created.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    removed = []
    for entry in os.scandir(root):
        if not entry.name.startswith(TEMP_PREFIX):
            continue
        path = Path(entry.path)
        remove_tree(path)  # a .tmp- name: deleted in place
        removed.append(path)
    if removed:
        log.info("removed %d stale temporaries from %s", len(removed), root)
    return removed


def read_latest(output_dir: str | os.PathLike[str]) -> str | None:
    """The checkpoint directory name stored in ``<output_dir>/latest``, or None if absent.

    Raises CheckpointError if the file holds anything but a checkpoint directory name.
    """
    path = Path(output_dir) / LATEST_NAME
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{LATEST_NAME}: unreadable: {exc}") from exc
    if parse_step(text) is None:
        raise CheckpointError(f"{LATEST_NAME}: does not name a checkpoint: {text[:80]!r}")
    return text


def write_latest(output_dir: str | os.PathLike[str], step: int) -> None:
    """Point ``<output_dir>/latest`` at the checkpoint of ``step``, atomically and durably."""
    atomic_write_bytes(Path(output_dir) / LATEST_NAME, f"{step_dir_name(step)}\n".encode())
