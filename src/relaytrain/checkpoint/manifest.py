"""The manifest: what makes a directory of files a self-verifying checkpoint.

```json
{"format_version": 2, "step": 200, "epoch": 3, "created_at": "2025-01-01T00:00:00+00:00",
 "files": {"model/model.safetensors": {"size": 40000000, "sha256": "ab…",
                                       "chunk_bytes": 16777216, "blake3": ["c1…", "d2…", "e3…"]}},
 "metadata": {}}
```

A checkpoint is valid when its manifest parses, has a known format version, and every file it
lists exists with that size and content, and no other file is there. The sha256 of the
manifest's bytes is the checkpoint's identity (what the commander records).

Format 2 (written since issue 14) gives each file, besides its size and whole-file sha256
(what stores compare: Hub LFS oids, S3 ``x-amz-meta-sha256``), the BLAKE3 digest of every
``chunk_bytes`` chunk in order (the last one may be shorter; an empty file has none).
Readers verify the chunks, all of them in parallel (``_hashio.check_files``), not the sha256:
both are collision-resistant, and the manifest's own sha256 vouches for both. Format 1
(``size`` and ``sha256`` only) is still read and verified, one whole file per core.
docs/checkpoints.md describes the format and the figures behind it.

Public API: ``Verification``, ``FileEntry``, ``build_manifest``, ``write_manifest``,
``manifest_bytes``, ``manifest_sha256``, ``parse_manifest``, ``read_manifest``,
``check_layout``, ``verify``, ``list_files``, ``check_relative_name``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from relaytrain.checkpoint._fs import TEMP_PREFIX, atomic_write_bytes
from relaytrain.checkpoint._hashio import check_files, file_entry, map_files
from relaytrain.checkpoint.layout import FORMAT_VERSION, MANIFEST_NAME, parse_step
from relaytrain.errors import CheckpointError

KNOWN_FORMAT_VERSIONS = frozenset({1, 2})
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_MANIFEST_TEMP = f"{TEMP_PREFIX}{MANIFEST_NAME}-"

FileEntry = dict[str, Any]
"""The manifest entry of one file: ``{"size", "sha256", "chunk_bytes", "blake3"}`` (format 2)."""


@dataclass(frozen=True)
class Verification:
    """The outcome of ``verify``: ``ok``, or the first problem found, naming the file."""

    ok: bool
    """Whether the checkpoint is complete and intact."""
    reason: str | None = None
    """Why not, e.g. ``"optimizer.pt: size 10 != 20"``; None when ok."""
    step: int | None = None
    """The step the manifest records, when it could be read."""
    manifest: dict[str, Any] | None = None
    """The parsed manifest, when it could be read."""


def check_relative_name(name: str) -> str:
    """Return ``name`` if it is a safe relative POSIX path inside a checkpoint, else raise
    ValueError: no absolute paths, no ``..``, no empty parts, not the manifest itself."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"file name must be a non-empty string, got {name!r}")
    pure = PurePosixPath(name)
    if (pure.is_absolute() or "\\" in name or pure.as_posix() != name
            or any(part in ("", ".", "..") for part in name.split("/"))):
        raise ValueError(f"file name must be a plain relative path like 'model/model.safetensors', got {name!r}")
    if name == MANIFEST_NAME:
        raise ValueError(f"{MANIFEST_NAME} is written by relaytrain and cannot be a state file")
    return name


def list_files(path: Path) -> list[str]:
    """Relative POSIX paths of every file under ``path``, sorted, except the manifest and
    the temporary a crash while writing it may leave (``.tmp-manifest.json-*``)."""
    found = []
    for dirpath, _dirnames, filenames in os.walk(path):
        here = Path(dirpath)
        for name in filenames:
            full = here / name
            if full.is_file():
                found.append(full.relative_to(path).as_posix())
    return sorted(rel for rel in found if rel != MANIFEST_NAME and not rel.startswith(_MANIFEST_TEMP))


def build_manifest(step: int, epoch: int | None, files: Mapping[str, FileEntry],
                   metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest dict for already hashed ``files``."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
        raise ValueError(f"epoch must be an integer or None, got {epoch!r}")
    return {
        "format_version": FORMAT_VERSION,
        "step": step,
        "epoch": epoch,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": {name: dict(entry) for name, entry in sorted(files.items())},
        "metadata": dict(metadata or {}),
    }


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The canonical bytes of a manifest (sorted keys, so equal manifests hash equal)."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def write_manifest(path: str | os.PathLike[str], step: int, epoch: int | None = None,
                   metadata: Mapping[str, Any] | None = None,
                   *, known: Mapping[str, FileEntry] | None = None) -> dict[str, Any]:
    """Hash every file under ``path`` (except manifest.json) and write ``manifest.json``
    atomically; return the manifest.

    Used by the worker when an external trainer wrote a checkpoint without one. ``known``
    gives the entries of files the caller has just written and hashed, which are then not
    read again.
    """
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory")
    known = known or {}
    names = list_files(root)
    todo = [name for name in names if name not in known]
    hashed = dict(zip(todo, map_files(lambda name: file_entry(root / name), todo), strict=True))
    files = {name: known.get(name) or hashed[name] for name in names}
    manifest = build_manifest(step, epoch, files, metadata)
    atomic_write_bytes(root / MANIFEST_NAME, manifest_bytes(manifest))
    return manifest


def manifest_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex of the ``manifest.json`` bytes of the checkpoint at ``path``: its identity."""
    target = Path(path) / MANIFEST_NAME
    try:
        return hashlib.sha256(target.read_bytes()).hexdigest()
    except FileNotFoundError as exc:
        raise CheckpointError(f"{MANIFEST_NAME} missing in {path}") from exc


def parse_manifest(data: bytes) -> dict[str, Any]:
    """Parse and validate manifest bytes; raise CheckpointError with a readable reason."""
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{MANIFEST_NAME}: invalid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{MANIFEST_NAME}: not a JSON object")
    version = manifest.get("format_version")
    if version not in KNOWN_FORMAT_VERSIONS:
        raise CheckpointError(f"{MANIFEST_NAME}: unknown format_version {version!r}")
    step = manifest.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{MANIFEST_NAME}: bad step {step!r}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{MANIFEST_NAME}: 'files' is not an object")
    for name, entry in files.items():
        try:
            check_relative_name(name)
        except ValueError as exc:
            raise CheckpointError(f"{MANIFEST_NAME}: bad file name {name!r}") from exc
        if (not isinstance(entry, dict) or not _is_count(entry.get("size"))
                or not isinstance(entry.get("sha256"), str) or not _SHA256_RE.fullmatch(entry["sha256"])):
            raise CheckpointError(f"{MANIFEST_NAME}: bad entry for {name}")
        if version >= 2:
            problem = _chunk_problem(entry)
            if problem is not None:
                raise CheckpointError(f"{MANIFEST_NAME}: bad entry for {name}: {problem}")
    return manifest


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _chunk_problem(entry: Mapping[str, Any]) -> str | None:
    """What is wrong with the chunk digests of a format-2 entry, or None."""
    step, digests = entry.get("chunk_bytes"), entry.get("blake3")
    if not _is_count(step) or step == 0:
        return f"chunk_bytes must be a positive integer, got {step!r}"
    if not isinstance(digests, list) or not all(isinstance(d, str) and _SHA256_RE.fullmatch(d) for d in digests):
        return "blake3 must be a list of 64-hex-digit digests"
    expected = -(-entry["size"] // step)
    if len(digests) != expected:
        return f"{len(digests)} blake3 digests for {entry['size']} bytes in chunks of {step} (expected {expected})"
    return None


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed, validated manifest of the checkpoint at ``path`` (CheckpointError if not)."""
    try:
        data = (Path(path) / MANIFEST_NAME).read_bytes()
    except FileNotFoundError as exc:
        raise CheckpointError(f"{MANIFEST_NAME} missing") from exc
    except OSError as exc:
        raise CheckpointError(f"{MANIFEST_NAME}: unreadable ({exc})") from exc
    return parse_manifest(data)


def check_layout(path: Path, manifest: Mapping[str, Any]) -> str | None:
    """Everything ``verify`` checks except the hashes: files present, sizes, nothing extra,
    the step matching the directory name. Returns the first problem or None."""
    dir_step = parse_step(path.name)
    if dir_step is not None and dir_step != manifest["step"]:
        return f"{MANIFEST_NAME}: step {manifest['step']} does not match directory {path.name}"
    listed = manifest["files"]
    for name in sorted(listed):
        try:
            size = (path / name).stat().st_size
        except FileNotFoundError:
            return f"{name}: missing"
        if not (path / name).is_file():
            return f"{name}: not a file"
        if size != listed[name]["size"]:
            return f"{name}: size {size} != {listed[name]['size']}"
    for name in list_files(path):
        if name not in listed:
            return f"{name}: not listed in {MANIFEST_NAME}"
    return None


def verify(path: str | os.PathLike[str]) -> Verification:
    """Check the checkpoint at ``path``: manifest parses, format version known, every listed
    file present with matching size and digests (format 2: every chunk's BLAKE3, on all
    cores; format 1: the sha256), no unlisted file. Never raises for a bad
    checkpoint; the reason names the offending file."""
    root = Path(path)
    if not root.is_dir():
        return Verification(False, f"{root.name}: no such checkpoint directory")
    try:
        manifest = read_manifest(root)
    except CheckpointError as exc:
        return Verification(False, str(exc))
    step = manifest["step"]
    problem = check_layout(root, manifest) or check_files(root, manifest["files"])
    if problem is not None:
        return Verification(False, problem, step, manifest)
    return Verification(True, None, step, manifest)
