"""The one small interface every artifact store implements (DESIGN §10).

A store makes checkpoints durable. Its promises:

- ``put_checkpoint`` uploads a committed local checkpoint, then verifies the stored copy
  (sizes and sha256 against the manifest) before it becomes visible: nothing half-uploaded
  or unverified is ever listed.
- ``get_checkpoint`` downloads into a temporary directory next to the destination,
  verifies every byte against the stored manifest, then renames into place.
- The manifest's bytes travel unchanged, so ``manifest_sha256`` (the identity the commander
  records) is the same locally and in every store.

Failures raise ``ArtifactError`` naming the file.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from relaytrain.checkpoint import Verification
from relaytrain.errors import ArtifactError

ProgressFn = Callable[[int, int], None]
"""``progress(bytes_done, bytes_total)``, called as a transfer advances."""


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is usable as one path component, else raise ValueError."""
    if (not isinstance(run_id, str) or not run_id or run_id in (".", "..") or "/" in run_id
            or "\\" in run_id or run_id.startswith(".") or "\x00" in run_id):
        raise ValueError(f"run_id must be a plain name (no '/', not starting with '.'), got {run_id!r}")
    return run_id


class ArtifactStore(ABC):
    """Where checkpoints (and other run files) become durable."""

    last_commit: str | None = None
    """The store's commit holding the checkpoint the last ``put_checkpoint`` stored, for the
    worker to record with it (``CheckpointCommit.revision``); None for stores without history."""

    def anchor(self, revision: str | None) -> None:
        """Start from ``revision``, the commit the commander recorded for the run's newest
        durable checkpoint (see ``HFStore``). A no-op for stores without history."""
        return

    @abstractmethod
    def uri_for(self, run_id: str, step: int) -> str:
        """The URI of the checkpoint of ``step`` of ``run_id`` in this store."""

    @abstractmethod
    def put_checkpoint(self, local_dir: str | os.PathLike[str], run_id: str, step: int,
                       progress: ProgressFn | None = None) -> str:
        """Upload the committed checkpoint at ``local_dir`` as ``step`` of ``run_id``, verify
        it in the store, and return its URI. Atomic: visible only once complete and verified."""

    @abstractmethod
    def get_checkpoint(self, run_id: str, step: int, dest_dir: str | os.PathLike[str],
                       progress: ProgressFn | None = None, *,
                       expected_manifest_sha256: str | None = None) -> Path:
        """Download the checkpoint into ``dest_dir`` (the checkpoint directory itself),
        verified, and return it. With ``expected_manifest_sha256``, refuse a stored copy
        whose manifest differs. An existing ``dest_dir`` is replaced atomically."""

    @abstractmethod
    def list_checkpoints(self, run_id: str) -> list[int]:
        """Steps of ``run_id``'s checkpoints in the store, ascending."""

    @abstractmethod
    def verify_checkpoint(self, run_id: str, step: int) -> Verification:
        """Check the stored copy: manifest, sizes, sha256 (never raises for a bad copy)."""

    @abstractmethod
    def delete_checkpoint(self, run_id: str, step: int) -> None:
        """Delete the checkpoint from the store (no-op if absent)."""

    @abstractmethod
    def put_file(self, local_path: str | os.PathLike[str], run_id: str, name: str,
                 progress: ProgressFn | None = None) -> str:
        """Store one file as ``name`` (a relative path) under ``run_id``; return its URI.
        Atomic: readers see the old file or the new one."""

    def put_files(self, files: list[tuple[str | os.PathLike[str], str]], run_id: str) -> list[str]:
        """Store several ``(local_path, name)`` files under ``run_id`` (each as ``put_file``
        does); stores with commits make it one commit. Returns their URIs."""
        return [self.put_file(path, run_id, name) for path, name in files]

    @abstractmethod
    def get_file(self, run_id: str, name: str, dest: str | os.PathLike[str],
                 progress: ProgressFn | None = None) -> Path:
        """Fetch a file stored with ``put_file`` into ``dest`` (atomically) and return it."""

    def list_runs(self) -> list[str]:
        """Run ids the store holds anything for, sorted (used by ``relay sync list-backups``).
        Stores that cannot enumerate their runs raise ArtifactError."""
        raise ArtifactError(f"{self!r} cannot list its runs")

    def read_manifest(self, run_id: str, step: int) -> bytes:
        """The stored ``manifest.json`` bytes of a checkpoint, unchanged (their sha256 is the
        checkpoint's identity). ArtifactError if the store does not hold the checkpoint, or
        cannot read a manifest alone."""
        raise ArtifactError(f"{self!r} cannot read a stored manifest on its own")
