"""Writing, committing, verifying, finding and pruning checkpoints (DESIGN §5).

A checkpoint is a directory ``<output_dir>/step_<N:08d>/`` whose ``manifest.json``, written
last, lists every file with its size, sha256 and the BLAKE3 of each 16 MiB chunk (format 2,
``manifest.py``; docs/checkpoints.md). It is written into ``.tmp-step_<N>-<random>``,
fsynced and renamed into place; ``<output_dir>/latest`` then names it. Readers verify before
they trust: ``verify``, ``find_latest_valid``, ``CheckpointManager.load``. Which steps to
keep is decided once, by ``steps_to_keep``. The durable-write primitives (``atomic_write_text``,
``atomic_write_bytes``, ``staged_dir``) are for every file the project writes, not only these.

This package imports nothing of relaytrain but ``relaytrain.errors``, and imports torch only
inside the functions that handle tensors.
"""

from relaytrain.checkpoint._fs import (
    TEMP_PREFIX,
    atomic_write_bytes,
    atomic_write_text,
    discard_on_error,
    fsync_path,
    publish_dir,
    remove_tree,
    staged_dir,
    temp_sibling,
)
from relaytrain.checkpoint.commit import LatestResult, commit_checkpoint_dir, find_latest_valid
from relaytrain.checkpoint.layout import (
    FORMAT_VERSION,
    LATEST_NAME,
    MANIFEST_NAME,
    clean_temp,
    list_checkpoints,
    make_temp_dir,
    parse_step,
    read_latest,
    step_dir_name,
    write_latest,
)
from relaytrain.checkpoint.manager import CheckpointManager
from relaytrain.checkpoint.manifest import (
    Verification,
    manifest_sha256,
    parse_manifest,
    read_manifest,
    verify,
    write_manifest,
)
from relaytrain.checkpoint.retention import check_retention, prune, steps_to_keep
from relaytrain.checkpoint.state import load_checkpoint

__all__ = [
    "FORMAT_VERSION",
    "LATEST_NAME",
    "MANIFEST_NAME",
    "TEMP_PREFIX",
    "CheckpointManager",
    "LatestResult",
    "Verification",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_retention",
    "clean_temp",
    "commit_checkpoint_dir",
    "discard_on_error",
    "find_latest_valid",
    "fsync_path",
    "list_checkpoints",
    "load_checkpoint",
    "make_temp_dir",
    "manifest_sha256",
    "parse_manifest",
    "parse_step",
    "prune",
    "publish_dir",
    "read_latest",
    "read_manifest",
    "remove_tree",
    "staged_dir",
    "step_dir_name",
    "steps_to_keep",
    "temp_sibling",
    "verify",
    "write_latest",
    "write_manifest",
]
