"""LocalStore, open_store and fetch_for_resume, on real folders."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from relaytrain.artifacts import ArtifactStore, LocalStore, fetch_for_resume, open_store
from relaytrain.checkpoint import CheckpointManager, list_checkpoints, load_checkpoint, manifest_sha256, verify
from relaytrain.errors import ArtifactError

STATE = {
    "model/weights.bin": b"w" * 5000,
    "optimizer.bin": b"o" * 300,
    "trainer_state.json": {"step": 100},
}


def checkpoint(out: Path, step: int, **changes: object) -> Path:
    path = CheckpointManager(out).save({**STATE, **changes}, step)
    assert path is not None
    return path


def flip_byte(path: Path, position: int = 7) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


def no_temporaries(folder: Path) -> bool:
    return not folder.exists() or not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_put_get_list_verify_delete(tmp_path, store) -> None:
    local = checkpoint(tmp_path / "run", 100)
    progress: list[tuple[int, int]] = []
    uri = store.put_checkpoint(local, "run-1", 100, progress=lambda done, total: progress.append((done, total)))
    stored = tmp_path / "store" / "run-1" / "checkpoints" / "step_00000100"
    assert uri == stored.as_uri() == store.uri_for("run-1", 100)
    assert uri.startswith("file:///")
    assert store.list_checkpoints("run-1") == [100]
    assert store.list_checkpoints("other-run") == []
    assert store.verify_checkpoint("run-1", 100).ok
    assert manifest_sha256(stored) == manifest_sha256(local)  # identity survives the upload
    total = progress[-1][1]
    assert progress[0] == (0, total) and progress[-1] == (total, total)
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)

    dest = tmp_path / "elsewhere" / "checkpoints" / "step_00000100"
    assert store.get_checkpoint("run-1", 100, dest) == dest
    assert verify(dest).ok
    assert load_checkpoint(dest)["trainer_state.json"] == {"step": 100}
    assert no_temporaries(dest.parent)

    store.delete_checkpoint("run-1", 100)
    assert store.list_checkpoints("run-1") == []
    assert not store.verify_checkpoint("run-1", 100).ok
    store.delete_checkpoint("run-1", 100)  # absent: no-op


def test_put_refuses_a_corrupt_local_checkpoint_naming_the_file(tmp_path, store) -> None:
    local = checkpoint(tmp_path / "run", 100)
    flip_byte(local / "optimizer.bin")
    with pytest.raises(ArtifactError, match="optimizer.bin: sha256 mismatch"):
        store.put_checkpoint(local, "run-1", 100)
    assert store.list_checkpoints("run-1") == []
    assert no_temporaries(tmp_path / "store" / "run-1" / "checkpoints")


def test_put_checks_the_step_and_the_manifest(tmp_path, store) -> None:
    local = checkpoint(tmp_path / "run", 100)
    with pytest.raises(ArtifactError, match="manifest says step 100"):
        store.put_checkpoint(local, "run-1", 200)
    (local / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest.json missing"):
        store.put_checkpoint(local, "run-1", 100)


def test_an_interrupted_upload_is_never_listed(tmp_path, store) -> None:
    local = checkpoint(tmp_path / "run", 100)

    def die_halfway(done: int, total: int) -> None:
        if 0 < done < total:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.put_checkpoint(local, "run-1", 100, progress=die_halfway)
    assert store.list_checkpoints("run-1") == []
    assert no_temporaries(tmp_path / "store" / "run-1" / "checkpoints")


def test_put_is_idempotent_and_a_new_manifest_replaces(tmp_path, store) -> None:
    first = checkpoint(tmp_path / "a", 100)
    store.put_checkpoint(first, "run-1", 100)
    calls: list[int] = []
    store.put_checkpoint(first, "run-1", 100, progress=lambda done, total: calls.append(done))
    assert calls == []  # already there and verified: nothing copied
    second = checkpoint(tmp_path / "b", 100, **{"optimizer.bin": b"p" * 300})
    store.put_checkpoint(second, "run-1", 100)
    stored = tmp_path / "store" / "run-1" / "checkpoints" / "step_00000100"
    assert manifest_sha256(stored) == manifest_sha256(second)
    assert store.verify_checkpoint("run-1", 100).ok


def test_corrupt_object_in_store_is_detected_on_get_naming_the_file(tmp_path, store) -> None:
    store.put_checkpoint(checkpoint(tmp_path / "run", 100), "run-1", 100)
    stored = tmp_path / "store" / "run-1" / "checkpoints" / "step_00000100"
    flip_byte(stored / "model" / "weights.bin", 4000)
    assert store.verify_checkpoint("run-1", 100).reason == "model/weights.bin: sha256 mismatch"
    dest = tmp_path / "restore" / "step_00000100"
    with pytest.raises(ArtifactError, match="model/weights.bin: sha256 mismatch"):
        store.get_checkpoint("run-1", 100, dest)
    assert not dest.exists()
    assert no_temporaries(dest.parent)
    flip_byte(stored / "model" / "weights.bin", 4000)
    (stored / "optimizer.bin").write_bytes(b"o")
    with pytest.raises(ArtifactError, match="optimizer.bin: size 1 != 300"):
        store.get_checkpoint("run-1", 100, dest)


def test_get_of_a_missing_checkpoint_or_wrong_manifest(tmp_path, store) -> None:
    with pytest.raises(ArtifactError, match="no such checkpoint"):
        store.get_checkpoint("run-1", 5, tmp_path / "x")
    store.put_checkpoint(checkpoint(tmp_path / "run", 100), "run-1", 100)
    with pytest.raises(ArtifactError, match="manifest.json sha256"):
        store.get_checkpoint("run-1", 100, tmp_path / "x", expected_manifest_sha256="0" * 64)


def test_get_replaces_an_existing_destination(tmp_path, store) -> None:
    local = checkpoint(tmp_path / "run", 100)
    store.put_checkpoint(local, "run-1", 100)
    flip_byte(local / "optimizer.bin")
    (local / "junk.bin").write_bytes(b"junk")
    store.get_checkpoint("run-1", 100, local)
    assert verify(local).ok


@pytest.mark.parametrize("run_id", ["", "a/b", "..", ".hidden"])
def test_bad_run_ids_are_refused(store, run_id) -> None:
    with pytest.raises(ValueError):
        store.list_checkpoints(run_id)


def test_put_file_and_get_file(tmp_path, store) -> None:
    source = tmp_path / "metrics.json"
    source.write_text('{"acc": 0.5}')
    uri = store.put_file(source, "run-1", "eval/step_100/metrics.json")
    assert uri.endswith("/run-1/files/eval/step_100/metrics.json")
    fetched = store.get_file("run-1", "eval/step_100/metrics.json", tmp_path / "out" / "m.json")
    assert fetched.read_text() == '{"acc": 0.5}'
    with pytest.raises(ArtifactError, match="no such file"):
        store.get_file("run-1", "missing.json", tmp_path / "x")
    with pytest.raises(ValueError):
        store.put_file(source, "run-1", "../escape.json")


def test_open_store_dispatches_on_scheme(tmp_path) -> None:
    by_path = open_store(str(tmp_path / "s"))
    assert isinstance(by_path, LocalStore) and isinstance(by_path, ArtifactStore)
    assert by_path.root == (tmp_path / "s").resolve()
    by_uri = open_store((tmp_path / "with space").as_uri())
    assert isinstance(by_uri, LocalStore) and by_uri.root == tmp_path / "with space"
    by_config = open_store(SimpleNamespace(uri=str(tmp_path / "c"), endpoint_url=None))
    assert isinstance(by_config, LocalStore) and by_config.root == tmp_path / "c"
    assert open_store(tmp_path / "p").root == tmp_path / "p"
    # s3:// and hf:// are dispatched to their own stores, tested with them.
    with pytest.raises(ArtifactError, match="unknown store scheme"):
        open_store("gs://bucket")
    with pytest.raises(ArtifactError, match="local path"):
        open_store("file://otherhost/x")


def test_fetch_for_resume_uses_a_matching_local_copy(tmp_path, store) -> None:
    out = tmp_path / "run" / "checkpoints"
    local = checkpoint(out, 100)
    sha = manifest_sha256(local)
    # The store holds nothing for this run: a download attempt would fail.
    assert fetch_for_resume(store, "run-1", 100, sha, out) == local


def test_fetch_for_resume_downloads_when_local_differs_or_is_corrupt(tmp_path, store) -> None:
    durable = checkpoint(tmp_path / "durable", 100)
    store.put_checkpoint(durable, "run-1", 100)
    sha = manifest_sha256(durable)

    out = tmp_path / "machine" / "checkpoints"
    checkpoint(out, 100, **{"optimizer.bin": b"never made durable"})
    path = fetch_for_resume(store, "run-1", 100, sha, out)
    assert path == out / "step_00000100"
    assert manifest_sha256(path) == sha and verify(path).ok

    flip_byte(path / "optimizer.bin")
    assert fetch_for_resume(store, "run-1", 100, sha, out) == path
    assert verify(path).ok

    fresh = tmp_path / "new-machine" / "checkpoints"
    assert verify(fetch_for_resume(store, "run-1", 100, sha, fresh)).ok
    assert list_checkpoints(fresh) == [100]
    with pytest.raises(ArtifactError, match="manifest.json sha256"):
        fetch_for_resume(store, "run-1", 100, "f" * 64, tmp_path / "third")
