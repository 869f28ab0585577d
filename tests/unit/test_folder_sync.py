"""A run folder travels through the store: changed files go up with an index, and the next
machine restores exactly what was stored (hidden files, links and temporaries stay behind)."""

from __future__ import annotations

import os

from relaytrain.artifacts import LocalStore
from relaytrain.worker.folder_sync import FolderSync


def tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_synced_twice_is_restored_elsewhere_as_stored(tmp_path):
    store = LocalStore(tmp_path / "store")
    here = tmp_path / "a" / "tracking"
    (here / "tensorboard").mkdir(parents=True)
    (here / "tensorboard" / "events.1").write_bytes(b"one")
    (here / "mlflow").mkdir()
    (here / "mlflow" / ".live.db").write_bytes(b"live, never leaves")
    (here / "mlflow" / "mlflow.db.tmp").write_bytes(b"half a snapshot")
    os.symlink(here / "tensorboard" / "events.1", here / "latest")
    sync = FolderSync(store, "run-1", here, "tracking")
    assert sync.sync() == 1 and sync.sync() == 0  # nothing changed since
    (here / "tensorboard" / "events.1").write_bytes(b"one, longer")
    (here / "mlflow" / "mlflow.db").write_bytes(b"snapshot")
    assert sync.sync() == 2

    there = tmp_path / "b" / "tracking"
    (there / "stale").mkdir(parents=True)
    (there / "stale" / "left.over").write_bytes(b"from an earlier attempt on this machine")
    heir = FolderSync(store, "run-1", there, "tracking")
    assert heir.restore() == 2
    assert tree(there) == {"mlflow/mlflow.db": b"snapshot", "tensorboard/events.1": b"one, longer"}
    assert heir.sync() == 0  # what came down is not sent back up
    (there / "tensorboard" / "events.2").write_bytes(b"two")
    assert heir.sync() == 1
    third = FolderSync(store, "run-1", tmp_path / "c" / "tracking", "tracking")
    assert third.restore() == 3 and tree(third.folder) == tree(there)


def test_nothing_stored_restores_an_empty_folder(tmp_path):
    folder = tmp_path / "tracking"
    (folder / "wandb").mkdir(parents=True)
    (folder / "wandb" / "never.synced").write_text("an earlier attempt here that stored nothing")
    assert FolderSync(LocalStore(tmp_path / "store"), "run-1", folder, "tracking").restore() == 0
    assert folder.is_dir() and tree(folder) == {}


def test_an_attempt_that_did_not_restore_keeps_the_earlier_files_listed(tmp_path):
    store = LocalStore(tmp_path / "store")
    first = FolderSync(store, "run-1", tmp_path / "a" / "rollouts", "rollouts")
    first.folder.mkdir(parents=True)
    (first.folder / "r1.jsonl").write_text("1")
    assert first.sync() == 1
    heir = FolderSync(store, "run-1", tmp_path / "b" / "rollouts", "rollouts")
    heir.folder.mkdir(parents=True)
    (heir.folder / "r2.jsonl").write_text("2")
    assert heir.sync() == 1
    third = FolderSync(store, "run-1", tmp_path / "c" / "rollouts", "rollouts")
    assert third.restore() == 2 and tree(third.folder) == {"r1.jsonl": b"1", "r2.jsonl": b"2"}
