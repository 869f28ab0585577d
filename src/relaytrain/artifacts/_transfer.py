"""Helpers shared by the remote stores (S3, Hugging Face): progress across threads,
hashing while bytes stream, and the checks that make downloads resumable."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from relaytrain.artifacts.base import ProgressFn
from relaytrain.checkpoint import MANIFEST_NAME, parse_manifest, publish_dir
from relaytrain.errors import ArtifactError, CheckpointError

log = logging.getLogger(__name__)

MB = 1 << 20


class TransferProgress:
    """Thread-safe byte counter that reports ``(done, total)`` to an optional ProgressFn."""

    def __init__(self, total: int, callback: ProgressFn | None) -> None:
        self.done = 0
        self.total = total
        self._callback = callback
        self._lock = threading.Lock()
        if callback is not None:
            callback(0, total)

    def advance(self, count: int) -> None:
        """Count ``count`` more bytes (transfer libraries call this from worker threads)."""
        with self._lock:
            self.done = max(0, min(self.total, self.done + count))
            if self._callback is not None:
                self._callback(self.done, self.total)


class OffsetWriter:
    """A seekable writer (s3transfer writes each part at its offset, from one thread) that
    remembers what it wrote, so an interrupted download can be cut back to its complete prefix."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._position = 0
        self._ranges: list[tuple[int, int]] = []

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._position = self._handle.seek(offset, whence)
        return self._position

    def tell(self) -> int:
        return self._position

    def seekable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        count = self._handle.write(data)
        self._ranges.append((self._position, self._position + count))
        self._position += count
        return count

    def prefix(self) -> int:
        """How many bytes from the start were all written."""
        end = 0
        for start, stop in sorted(self._ranges):
            if start > end:
                break
            end = max(end, stop)
        return end


def sha256_file(path: Path, *, sync: bool = False) -> tuple[int, str]:
    """``(size, sha256 hex)`` of a local file; with ``sync``, its bytes are on disk afterwards
    (fsync), so a fetcher need not wait for that itself."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(8 * MB):
            digest.update(chunk)
            size += len(chunk)
        if sync:
            os.fsync(handle.fileno())
    return size, digest.hexdigest()


def local_manifest(src: Path, step: int) -> tuple[bytes, dict[str, Any]]:
    """The bytes and parsed content of the manifest of the checkpoint at ``src``, which must
    be ``step``; ArtifactError otherwise."""
    try:
        data = (src / MANIFEST_NAME).read_bytes()
        manifest = parse_manifest(data)
    except FileNotFoundError as exc:
        raise ArtifactError(f"{src}: cannot upload: {MANIFEST_NAME} missing") from exc
    except CheckpointError as exc:
        raise ArtifactError(f"{src}: cannot upload: {exc}") from exc
    if manifest["step"] != step:
        raise ArtifactError(f"{src}: manifest says step {manifest['step']}, asked to upload step {step}")
    return data, manifest


def matches(path: Path, entry: Mapping[str, Any]) -> bool:
    """Whether ``path`` is a file with the entry's size and sha256."""
    try:
        if not path.is_file() or path.stat().st_size != entry["size"]:
            return False
    except OSError:
        return False
    return sha256_file(path)[1] == entry["sha256"]


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` as ``dst`` (neither is written again), or copy it across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def keep_only(root: Path, names: set[str]) -> None:
    """Remove every file under ``root`` that is not one of ``names`` (left-over parts)."""
    for dirpath, _dirs, filenames in os.walk(root):
        for filename in filenames:
            full = Path(dirpath) / filename
            if full.relative_to(root).as_posix() not in names:
                full.unlink()


FetchFn = Callable[[str, Path, bool, "TransferProgress"], None]
"""``fetch(name, part, resume, tracker)``: fill the local file ``part`` with the stored file
``name`` (continuing what ``part`` already holds when ``resume``), counting bytes on
``tracker``. Verification is the caller's."""


def stored_files(uri: str, manifest_data: bytes, expected_sha256: str | None) -> tuple[str, dict[str, Any]]:
    """``(sha256, files)`` of stored manifest bytes; ArtifactError if they are not the
    expected manifest or do not parse."""
    sha = hashlib.sha256(manifest_data).hexdigest()
    if expected_sha256 is not None and sha != expected_sha256:
        raise ArtifactError(f"{uri}: {MANIFEST_NAME} sha256 {sha} != expected {expected_sha256}")
    try:
        return sha, parse_manifest(manifest_data)["files"]
    except CheckpointError as exc:
        raise ArtifactError(f"{uri}: {exc}") from exc


def assemble_checkpoint(uri: str, manifest_data: bytes, files: Mapping[str, Any], dest: Path, staging: Path,
                        fetch: FetchFn, progress: ProgressFn | None) -> Path:
    """Build the checkpoint in ``staging`` and rename it to ``dest``.

    A file already in ``staging`` (an earlier, interrupted attempt) or in ``dest`` with the
    manifest's size and sha256 is kept; any other is fetched into ``<name>.part``, continuing a
    partial one. Each fetched file is hashed and flushed to disk (fsync) on a helper thread
    while the next one downloads, so a fetcher need not fsync;
    a resumed file that does not verify is fetched once more from the start. Files that verify
    are kept in ``staging`` even when another does not: then ArtifactError names the bad file
    and the next attempt fetches only what is missing. The manifest is written last.
    """
    tracker = TransferProgress(sum(e["size"] for e in files.values()) + len(manifest_data), progress)
    staging.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(1, thread_name_prefix="relay-verify") as hasher:
        checks = []
        for name in sorted(files):
            entry, target = files[name], staging / name
            part = target.with_name(target.name + ".part")
            if matches(target, entry):
                tracker.advance(entry["size"])
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if matches(dest / name, entry):
                part.unlink(missing_ok=True)
                link_or_copy(dest / name, target)
                tracker.advance(entry["size"])
                continue
            have = part.stat().st_size if part.is_file() else 0
            fresh = have != entry["size"]  # a full-size part is an earlier attempt's, still unchecked
            if fresh:
                fetch(name, part, 0 < have < entry["size"], tracker)
                fresh = have == 0
            else:
                tracker.advance(have)
            checks.append((name, part, fresh, hasher.submit(sha256_file, part, sync=True)))
        problems = []
        for name, part, fresh, future in checks:
            entry = files[name]
            size, digest = future.result()
            if (size, digest) != (entry["size"], entry["sha256"]) and not fresh:
                part.unlink()
                log.warning("%s: %s (resumed) did not verify; fetching it again from the start", uri, name)
                fetch(name, part, False, tracker)
                size, digest = sha256_file(part, sync=True)
            if (size, digest) == (entry["size"], entry["sha256"]):
                os.replace(part, staging / name)
                continue
            part.unlink()
            problems.append(f"{name}: size {size} != {entry['size']}" if size != entry["size"]
                            else f"{name}: sha256 mismatch")
    if problems:
        raise ArtifactError(f"{uri}: {'; '.join(problems)}")
    keep_only(staging, set(files))
    with open(staging / MANIFEST_NAME, "wb") as handle:
        handle.write(manifest_data)
        handle.flush()
        os.fsync(handle.fileno())
    tracker.advance(len(manifest_data))
    publish_dir(staging, dest)
    log.info("downloaded %s to %s", uri, dest)
    return dest
