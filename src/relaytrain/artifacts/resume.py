"""``fetch_for_resume``: get the checkpoint a resuming worker was told to start from;
``verify_durable``: check a durable checkpoint from anywhere (``relay resume``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from relaytrain.artifacts.base import ArtifactStore, ProgressFn
from relaytrain.artifacts.factory import open_store, store_uri
from relaytrain.checkpoint import Verification, step_dir_name, verify
from relaytrain.checkpoint import manifest_sha256 as sha256_of_manifest
from relaytrain.errors import CheckpointError

log = logging.getLogger(__name__)


def fetch_for_resume(store: ArtifactStore, run_id: str, step: int, manifest_sha256: str,
                     local_output_dir: str | os.PathLike[str],
                     progress: ProgressFn | None = None, *, revision: str | None = None) -> Path:
    """Return a verified local copy of the durable checkpoint ``step`` of ``run_id`` whose
    manifest.json has sha256 ``manifest_sha256`` (what the commander recorded).

    The local ``<local_output_dir>/step_<N>`` is used as is if its manifest is that one and
    it verifies; otherwise the stored copy is downloaded over it (verified, atomically), read
    at ``revision`` when given: the store's commit the commander recorded (stores with
    history, ``HFStore``), so a later overwrite of the step's folder cannot change what is
    read. Raises ArtifactError if the store does not hold that exact checkpoint. ``latest`` in
    ``local_output_dir`` is not changed.
    """
    local = Path(local_output_dir) / step_dir_name(step)
    if local.is_dir():
        reason = _local_mismatch(local, manifest_sha256)
        if reason is None:
            log.info("resuming from local copy %s", local)
            return local
        log.info("local %s not usable (%s); downloading from the store", local, reason)
    at = {"revision": revision} if revision is not None else {}  # stores without history take none
    return store.get_checkpoint(run_id, step, local, progress, expected_manifest_sha256=manifest_sha256, **at)


def _local_mismatch(local: Path, expected: str) -> str | None:
    try:
        sha = sha256_of_manifest(local)
    except CheckpointError as exc:
        return str(exc)
    if sha != expected:
        return "its manifest differs from the durable one"
    check = verify(local)
    return None if check.ok else check.reason


def verify_durable(store: Any, run_id: str, step: int, recorded_uri: str) -> tuple[Verification, str]:
    """Check a durable checkpoint in its store, from anywhere: ``(verification, where)``.

    ``store`` is what ``open_store`` takes (a URI, or the run's ``StoreConfig``). A local
    store given as a relative path was resolved against the worker's working folder, not the
    caller's: the checkpoint's recorded URI (``file:///abs/…``, where the worker stored it) is
    then the path checked. ``where`` names what was checked, for the message.
    """
    uri, parsed = store_uri(store), urlparse(recorded_uri)
    if "://" not in uri and not Path(uri).is_absolute() and parsed.scheme == "file":
        path = Path(unquote(parsed.path))
        return verify(path), str(path)
    opened = open_store(store)
    return opened.verify_checkpoint(run_id, step), opened.uri_for(run_id, step)
