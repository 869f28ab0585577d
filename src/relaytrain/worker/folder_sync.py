"""Run files that leave the machine with the checkpoints: rollout trajectories and the trackers'
files (TensorBoard, W&B, MLflow). Once each checkpoint is uploaded, before it is committed as
durable (and once more when the trainer ends), every new or changed file under one of the run's
folders is stored under ``<run_id>/<subdir>/…`` in the run's store, so a durable step's files
never die with the pod. An index of what the store holds (``<subdir>/.index.json``, uploaded
last; earlier attempts' files stay listed) lets the next machine ``restore`` the folder before its
trainer starts. A failed upload is retried at the next checkpoint; it never stops training.
Hidden files, symbolic links and ``*.tmp`` files stay on the machine."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from relaytrain.artifacts import ArtifactStore
from relaytrain.errors import ArtifactMissing, RelayError

log = logging.getLogger(__name__)
INDEX_NAME = ".index.json"
"""The stored list of a folder's files: ``{"files": {relative path: size}}``."""


class FolderSync:
    """Uploads the files of one run folder that changed since the last upload; restores them."""

    def __init__(self, store: ArtifactStore, run_id: str, folder: Path, subdir: str) -> None:
        self.store = store
        self.run_id = run_id
        self.folder = folder
        self.subdir = subdir
        self.uploaded: dict[str, tuple[int, int]] = {}
        self.stored: dict[str, int] | None = None
        """What the stored index lists (None: not read yet)."""

    def pending(self) -> list[tuple[Path, str, tuple[int, int]]]:
        """``(path, name in the store, (size, mtime_ns))`` of each file new or changed since."""
        out = []
        if not self.folder.is_dir():
            return out
        for path in sorted(self.folder.rglob("*")):
            rel = path.relative_to(self.folder)
            if (path.is_symlink() or not path.is_file() or any(part.startswith(".") for part in rel.parts)
                    or path.suffix == ".tmp"):
                continue
            stat = path.stat()
            key = (stat.st_size, stat.st_mtime_ns)
            if self.uploaded.get(rel.as_posix()) != key:
                out.append((path, f"{self.subdir}/{rel.as_posix()}", key))
        return out

    def sync(self) -> int:
        """Upload what changed, then the index; returns how many files went up (0 on a failure, logged)."""
        todo = self.pending()
        if not todo:
            return 0
        try:
            if self.stored is None:  # an earlier attempt's files stay listed
                self.stored = self._read_index()
            index = self.stored | {path.relative_to(self.folder).as_posix(): key[0] for path, _, key in todo}
            with tempfile.TemporaryDirectory(prefix="relay-index-") as tmp:
                index_path = Path(tmp) / INDEX_NAME
                index_path.write_text(json.dumps({"files": index}, indent=0, sort_keys=True), encoding="utf-8")
                files = [(path, name) for path, name, _ in todo] + [(index_path, f"{self.subdir}/{INDEX_NAME}")]
                self.store.put_files(files, self.run_id)
        except (RelayError, OSError, ValueError) as exc:
            log.warning("%s files of %s not uploaded (%s); retrying at the next checkpoint", self.subdir,
                        self.run_id, exc)
            return 0
        self.stored = index
        for path, _, key in todo:
            self.uploaded[path.relative_to(self.folder).as_posix()] = key
        log.info("uploaded %d %s files of %s", len(todo), self.subdir, self.run_id)
        return len(todo)

    def _read_index(self) -> dict[str, int]:
        """``{relative path: size}`` of what the store holds of this folder ({} if nothing)."""
        with tempfile.TemporaryDirectory(prefix="relay-index-") as tmp:
            try:
                path = self.store.get_file(self.run_id, f"{self.subdir}/{INDEX_NAME}", Path(tmp) / INDEX_NAME)
            except ArtifactMissing:
                return {}
            return dict(json.loads(path.read_text(encoding="utf-8"))["files"])

    def restore(self) -> int:
        """Replace the local folder with the stored copy (what the index lists); returns how many
        files came down (0: nothing stored yet). ``ArtifactError`` if the store fails."""
        listed = self._read_index()
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        for rel in sorted(listed):
            path = self.store.get_file(self.run_id, f"{self.subdir}/{rel}", self.folder / rel)
            stat = path.stat()
            self.uploaded[rel] = (stat.st_size, stat.st_mtime_ns)  # stored already: not sent back up
        self.stored = listed
        if listed:
            log.info("restored %d %s files of %s", len(listed), self.subdir, self.run_id)
        return len(listed)
