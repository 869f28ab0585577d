"""``LocalStore``: an artifact store in a local (or network-mounted) folder.

Layout: ``<root>/<run_id>/checkpoints/step_<N:08d>/…`` for checkpoints and
``<root>/<run_id>/files/<name>`` for other files. Uploads go to a ``.tmp-*`` sibling, are
verified there, then renamed into place, so a reader never lists a partial checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from relaytrain.artifacts._transfer import TransferProgress, local_manifest
from relaytrain.artifacts.base import ArtifactStore, ProgressFn, check_run_id
from relaytrain.checkpoint import (
    MANIFEST_NAME,
    Verification,
    discard_on_error,
    fsync_path,
    list_checkpoints,
    manifest_sha256,
    parse_manifest,
    remove_tree,
    staged_dir,
    step_dir_name,
    temp_sibling,
    verify,
)
from relaytrain.errors import ArtifactError, ArtifactMissing, CheckpointError

log = logging.getLogger(__name__)

_CHUNK = 8 << 20


def _make_dirs(path: Path) -> None:
    """``mkdir -p path``, fsyncing the parent of every directory it creates."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        fsync_path(folder.parent)


def _copy_file(src: Path, dst: Path, progress: TransferProgress) -> tuple[int, str]:
    """Copy ``src`` to the new file ``dst`` (fsynced), hashing the bytes on the way."""
    digest = hashlib.sha256()
    size = 0
    view = memoryview(bytearray(_CHUNK))
    with open(src, "rb", buffering=0) as fin, open(dst, "xb", buffering=0) as fout:
        while count := fin.readinto(view):
            chunk = view[:count]
            digest.update(chunk)
            written = 0
            while written < count:
                written += fout.write(chunk[written:]) or 0
            size += count
            progress.advance(count)
        os.fsync(fout.fileno())
    return size, digest.hexdigest()


def _copy_checkpoint(src: Path, dst: Path, manifest_data: bytes, manifest: Mapping[str, Any],
                     label: str, progress: ProgressFn | None) -> None:
    """Copy every file listed in ``manifest`` from ``src`` into the empty ``dst``, checking
    each against the manifest as it is copied, then write the manifest bytes last."""
    files = manifest["files"]
    tracker = TransferProgress(sum(entry["size"] for entry in files.values()) + len(manifest_data), progress)
    made: set[Path] = {dst}
    for name in sorted(files):
        target = dst / name
        for parent in reversed(target.relative_to(dst).parents):
            folder = dst / parent
            if folder not in made:
                folder.mkdir(exist_ok=True)
                made.add(folder)
        try:
            size, sha = _copy_file(src / name, target, tracker)
        except FileNotFoundError as exc:
            raise ArtifactError(f"{label}: {name}: missing") from exc
        if size != files[name]["size"]:
            raise ArtifactError(f"{label}: {name}: size {size} != {files[name]['size']}")
        if sha != files[name]["sha256"]:
            raise ArtifactError(f"{label}: {name}: sha256 mismatch")
    with open(dst / MANIFEST_NAME, "xb") as handle:
        handle.write(manifest_data)
        handle.flush()
        os.fsync(handle.fileno())
    tracker.advance(len(manifest_data))
    for folder in sorted(made, key=lambda path: len(path.parts), reverse=True):
        fsync_path(folder)


class LocalStore(ArtifactStore):
    """An artifact store in the folder ``root`` (created on first upload)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    @property
    def uri(self) -> str:
        """``file://`` URI of the store's root."""
        return self.root.as_uri()

    def _checkpoints_dir(self, run_id: str) -> Path:
        return self.root / check_run_id(run_id) / "checkpoints"

    def list_runs(self) -> list[str]:
        """Run ids with a ``checkpoints`` folder under the root, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if (p / "checkpoints").is_dir() and not p.name.startswith("."))

    def read_manifest(self, run_id: str, step: int) -> bytes:
        """The stored ``manifest.json`` bytes of a checkpoint."""
        path = self._checkpoint_dir(run_id, step) / MANIFEST_NAME
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactError(f"{path.parent.as_uri()}: no such checkpoint in the store") from exc

    def _checkpoint_dir(self, run_id: str, step: int) -> Path:
        return self._checkpoints_dir(run_id) / step_dir_name(step)

    def uri_for(self, run_id: str, step: int) -> str:
        """``file:///<root>/<run_id>/checkpoints/step_<N>``."""
        return self._checkpoint_dir(run_id, step).as_uri()

    def put_checkpoint(self, local_dir: str | os.PathLike[str], run_id: str, step: int,
                       progress: ProgressFn | None = None) -> str:
        """Copy the checkpoint at ``local_dir`` into the store, hashing the source as it is
        read, verify the copy, then rename it into place. A stored copy with the same
        manifest that verifies is kept as is (the upload is idempotent)."""
        src = Path(local_dir)
        target = self._checkpoint_dir(run_id, step)
        uri = target.as_uri()
        manifest_data, manifest = local_manifest(src, step)
        local_sha = hashlib.sha256(manifest_data).hexdigest()
        if target.is_dir() and self._holds(target, local_sha):
            log.info("%s already holds this checkpoint; not uploading again", uri)
            return uri
        _make_dirs(target.parent)
        try:
            with staged_dir(target, fsync=False) as tmp:  # _copy_checkpoint fsyncs what it writes
                _copy_checkpoint(src, tmp, manifest_data, manifest, f"local {src}", progress)
                check = verify(tmp)
                if not check.ok:
                    raise ArtifactError(f"{uri}: verification in the store failed: {check.reason}")
        except OSError as exc:
            raise ArtifactError(f"uploading to {uri} failed: {exc}") from exc
        log.info("uploaded %s to %s", src, uri)
        return uri

    @staticmethod
    def _holds(target: Path, sha: str) -> bool:
        try:
            same = manifest_sha256(target) == sha
        except CheckpointError:
            return False
        return same and verify(target).ok

    def get_checkpoint(self, run_id: str, step: int, dest_dir: str | os.PathLike[str],
                       progress: ProgressFn | None = None, *,
                       expected_manifest_sha256: str | None = None) -> Path:
        """Copy the stored checkpoint to ``.tmp-step_<N>-*`` next to ``dest_dir``, checking
        every file against the stored manifest while copying, then rename it to
        ``dest_dir``. A corrupt stored file aborts the download, naming the file."""
        src = self._checkpoint_dir(run_id, step)
        uri = src.as_uri()
        try:
            manifest_data = (src / MANIFEST_NAME).read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactError(f"{uri}: no such checkpoint in the store") from exc
        sha = hashlib.sha256(manifest_data).hexdigest()
        if expected_manifest_sha256 is not None and sha != expected_manifest_sha256:
            raise ArtifactError(f"{uri}: {MANIFEST_NAME} sha256 {sha} != expected {expected_manifest_sha256}")
        try:
            manifest = parse_manifest(manifest_data)
        except CheckpointError as exc:
            raise ArtifactError(f"{uri}: {exc}") from exc
        dest = Path(dest_dir)
        _make_dirs(dest.parent)
        try:
            with staged_dir(dest, fsync=False) as tmp:
                _copy_checkpoint(src, tmp, manifest_data, manifest, uri, progress)
        except OSError as exc:
            raise ArtifactError(f"downloading {uri} failed: {exc}") from exc
        log.info("downloaded %s to %s", uri, dest)
        return dest

    def list_checkpoints(self, run_id: str) -> list[int]:
        """Steps of the stored checkpoints of ``run_id``, ascending."""
        return list_checkpoints(self._checkpoints_dir(run_id))

    def verify_checkpoint(self, run_id: str, step: int) -> Verification:
        """``relaytrain.checkpoint.verify`` of the stored copy."""
        return verify(self._checkpoint_dir(run_id, step))

    def delete_checkpoint(self, run_id: str, step: int) -> None:
        """Delete the stored checkpoint (renamed away first, so never half-listed)."""
        remove_tree(self._checkpoint_dir(run_id, step))

    def _file_path(self, run_id: str, name: str) -> Path:
        parts = name.split("/")
        if not name or name.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"file name must be a plain relative path, got {name!r}")
        return self.root / check_run_id(run_id) / "files" / name

    def put_file(self, local_path: str | os.PathLike[str], run_id: str, name: str,
                 progress: ProgressFn | None = None) -> str:
        """Copy ``local_path`` to ``<root>/<run_id>/files/<name>`` atomically."""
        target = self._file_path(run_id, name)
        _atomic_copy(Path(local_path), target, progress)
        return target.as_uri()

    def get_file(self, run_id: str, name: str, dest: str | os.PathLike[str],
                 progress: ProgressFn | None = None) -> Path:
        """Copy ``<root>/<run_id>/files/<name>`` to ``dest`` atomically."""
        src = self._file_path(run_id, name)
        if not src.is_file():
            raise ArtifactMissing(f"{src.as_uri()}: no such file in the store")
        target = Path(dest)
        _atomic_copy(src, target, progress)
        return target


def _atomic_copy(src: Path, dst: Path, progress: ProgressFn | None) -> None:
    try:
        total = src.stat().st_size
    except FileNotFoundError as exc:
        raise ArtifactError(f"{src}: no such file") from exc
    _make_dirs(dst.parent)
    tmp = temp_sibling(dst, dst.name)
    with discard_on_error(tmp):
        _copy_file(src, tmp, TransferProgress(total, progress))
        os.replace(tmp, dst)
    fsync_path(dst.parent)
