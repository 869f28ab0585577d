"""Rollout trajectories leave the machine with the checkpoints: once each checkpoint is
uploaded, before it is committed as durable (and once more when the trainer ends), every
new or changed file under the run's trajectory folder is stored under ``<run_id>/<subdir>/…``
in the run's store, so a durable step's trajectories never die with the pod.
A failed upload is retried at the next checkpoint; it never stops training."""

from __future__ import annotations

import logging
from pathlib import Path

from relaytrain.artifacts import ArtifactStore
from relaytrain.errors import RelayError

log = logging.getLogger(__name__)


class TrajectorySync:
    """Uploads the files of one trajectory folder that changed since the last upload."""

    def __init__(self, store: ArtifactStore, run_id: str, folder: Path, subdir: str) -> None:
        self.store = store
        self.run_id = run_id
        self.folder = folder
        self.subdir = subdir
        self.uploaded: dict[str, tuple[int, int]] = {}

    def pending(self) -> list[tuple[Path, str, tuple[int, int]]]:
        """``(path, name in the store, (size, mtime_ns))`` of each file new or changed since."""
        out = []
        if not self.folder.is_dir():
            return out
        for path in sorted(self.folder.rglob("*")):
            rel = path.relative_to(self.folder)
            if not path.is_file() or any(part.startswith(".") for part in rel.parts) or path.suffix == ".tmp":
                continue
            stat = path.stat()
            key = (stat.st_size, stat.st_mtime_ns)
            if self.uploaded.get(str(rel)) != key:
                out.append((path, f"{self.subdir}/{rel.as_posix()}", key))
        return out

    def sync(self) -> int:
        """Upload what changed; returns how many files went up (0 on a failure, logged)."""
        todo = self.pending()
        if not todo:
            return 0
        try:
            self.store.put_files([(path, name) for path, name, _ in todo], self.run_id)
        except (RelayError, OSError) as exc:
            log.warning("trajectories of %s not uploaded (%s); retrying at the next checkpoint", self.run_id, exc)
            return 0
        for path, _, key in todo:
            self.uploaded[str(path.relative_to(self.folder))] = key
        log.info("uploaded %d trajectory files of %s", len(todo), self.run_id)
        return len(todo)
