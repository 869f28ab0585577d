"""Manifests, verification, committing, finding the newest valid checkpoint, and pruning."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from blake3 import blake3

from relaytrain.checkpoint import (
    CheckpointManager,
    _fs,
    commit_checkpoint_dir,
    find_latest_valid,
    list_checkpoints,
    make_temp_dir,
    manifest_sha256,
    prune,
    read_latest,
    verify,
    write_latest,
    write_manifest,
)
from relaytrain.errors import CheckpointError


def make_checkpoint(out: Path, step: int, payload: bytes = b"weights" * 100) -> Path:
    """A committed checkpoint with a nested file, written through the public commit path."""
    tmp = make_temp_dir(out, step)
    (tmp / "model").mkdir()
    (tmp / "model" / "model.safetensors").write_bytes(payload + step.to_bytes(4, "little"))
    (tmp / "optimizer.pt").write_bytes(b"o" * 20)
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
    return commit_checkpoint_dir(tmp, out, step, epoch=2, metadata={"loss": 1.5})


def test_write_manifest_lists_every_file_with_size_and_sha256(tmp_path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(b"abc")
    (tmp_path / "optimizer.pt").write_bytes(b"")
    manifest = write_manifest(tmp_path, 7, epoch=3, metadata={"k": "v"})
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["format_version"] == 2
    assert manifest["step"] == 7
    assert manifest["epoch"] == 3
    assert manifest["metadata"] == {"k": "v"}
    assert manifest["created_at"].endswith("+00:00")
    assert manifest["files"] == {
        "model/w.bin": {"size": 3, "sha256": hashlib.sha256(b"abc").hexdigest(), "chunk_bytes": 16 << 20,
                        "blake3": [blake3(b"abc").hexdigest()]},
        "optimizer.pt": {"size": 0, "sha256": hashlib.sha256(b"").hexdigest(), "chunk_bytes": 16 << 20,
                         "blake3": []},
    }
    assert manifest_sha256(tmp_path) == hashlib.sha256((tmp_path / "manifest.json").read_bytes()).hexdigest()
    assert verify(tmp_path).ok


def test_rewriting_a_manifest_does_not_list_the_old_one_nor_a_crashed_temporary(tmp_path) -> None:
    (tmp_path / "a.bin").write_bytes(b"1")
    write_manifest(tmp_path, 1)
    (tmp_path / ".tmp-manifest.json-0badf00d").write_text("{half")  # a crash mid-write
    manifest = write_manifest(tmp_path, 1)
    assert list(manifest["files"]) == ["a.bin"]
    assert verify(tmp_path).ok


def test_commit_writes_step_dir_manifest_and_latest(tmp_path) -> None:
    path = make_checkpoint(tmp_path, 200)
    assert path == tmp_path / "step_00000200"
    assert read_latest(tmp_path) == "step_00000200"
    check = verify(path)
    assert check.ok and check.reason is None and check.step == 200
    assert check.manifest is not None and check.manifest["epoch"] == 2
    assert sorted(check.manifest["files"]) == ["model/model.safetensors", "optimizer.pt", "trainer_state.json"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


@pytest.mark.parametrize("atomic_exchange", [True, False])
def test_commit_replaces_an_existing_checkpoint_of_the_same_step(tmp_path, monkeypatch, atomic_exchange) -> None:
    if not atomic_exchange:
        monkeypatch.setattr(_fs, "exchange", lambda a, b: False)
    make_checkpoint(tmp_path, 100, payload=b"old")
    new = make_checkpoint(tmp_path, 100, payload=b"new")
    assert (new / "model" / "model.safetensors").read_bytes().startswith(b"new")
    assert verify(new).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000100"]


def test_exchange_swaps_two_directories(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f").write_text("b")
    if not _fs.exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("no atomic exchange on this platform; publish_dir uses two renames")
    assert (tmp_path / "a" / "f").read_text() == "b"
    assert (tmp_path / "b" / "f").read_text() == "a"


def test_commit_failure_removes_the_temp_dir(tmp_path) -> None:
    tmp = make_temp_dir(tmp_path, 1)
    (tmp / "a.bin").write_bytes(b"x")
    with pytest.raises(ValueError):
        commit_checkpoint_dir(tmp, tmp_path, -1)
    assert not tmp.exists()
    assert list_checkpoints(tmp_path) == []


@pytest.fixture
def good(tmp_path) -> Path:
    return make_checkpoint(tmp_path / "out", 200)


def test_flipped_byte_is_a_digest_mismatch(good) -> None:
    target = good / "model" / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[10] ^= 0x01
    target.write_bytes(bytes(data))
    check = verify(good)
    assert not check.ok
    assert check.reason == "model/model.safetensors: blake3 mismatch in bytes 0-704"
    assert check.step == 200


def test_truncated_file_is_a_size_mismatch(good) -> None:
    target = good / "optimizer.pt"
    target.write_bytes(target.read_bytes()[:10])
    assert verify(good).reason == "optimizer.pt: size 10 != 20"


def test_missing_manifest(good) -> None:
    (good / "manifest.json").unlink()
    check = verify(good)
    assert not check.ok and check.reason == "manifest.json missing" and check.manifest is None


def test_missing_file(good) -> None:
    (good / "trainer_state.json").unlink()
    assert verify(good).reason == "trainer_state.json: missing"


def test_extra_unlisted_file(good) -> None:
    (good / "model" / "stray.bin").write_bytes(b"?")
    assert verify(good).reason == "model/stray.bin: not listed in manifest.json"


def test_invalid_json_and_unknown_version_and_wrong_step(good) -> None:
    manifest_path = good / "manifest.json"
    original = json.loads(manifest_path.read_text())
    manifest_path.write_text("{not json")
    assert verify(good).reason.startswith("manifest.json: invalid JSON")
    manifest_path.write_text(json.dumps({**original, "format_version": 99}))
    assert verify(good).reason == "manifest.json: unknown format_version 99"
    manifest_path.write_text(json.dumps({**original, "step": 300}))
    assert verify(good).reason == "manifest.json: step 300 does not match directory step_00000200"
    bad_files = {"../escape.bin": {"size": 1, "sha256": "0" * 64}}
    manifest_path.write_text(json.dumps({**original, "files": bad_files}))
    assert verify(good).reason == "manifest.json: bad file name '../escape.bin'"


def test_verify_of_a_missing_directory(tmp_path) -> None:
    check = verify(tmp_path / "step_00000001")
    assert not check.ok and "no such checkpoint directory" in (check.reason or "")


def test_find_latest_valid_uses_latest(tmp_path) -> None:
    make_checkpoint(tmp_path, 100)
    make_checkpoint(tmp_path, 200)
    result = find_latest_valid(tmp_path)
    assert result.path == tmp_path / "step_00000200" and result.step == 200 and result.skipped == []


def test_find_latest_valid_falls_back_past_a_corrupt_newest_and_reports_it(tmp_path) -> None:
    make_checkpoint(tmp_path, 100)
    make_checkpoint(tmp_path, 200)
    newest = make_checkpoint(tmp_path, 300)
    (newest / "optimizer.pt").write_bytes(b"O" * 20)
    (tmp_path / "step_00000200" / "manifest.json").unlink()
    result = find_latest_valid(tmp_path)
    assert result.step == 100
    assert result.path == tmp_path / "step_00000100"
    assert result.skipped == [
        (newest, "named by latest: optimizer.pt: blake3 mismatch in bytes 0-20"),
        (tmp_path / "step_00000200", "manifest.json missing"),
    ]


def test_find_latest_valid_without_latest_scans_newest_first(tmp_path) -> None:
    make_checkpoint(tmp_path, 100)
    make_checkpoint(tmp_path, 200)
    (tmp_path / "latest").unlink()
    (tmp_path / ".tmp-step_00000300-dead").mkdir()
    assert find_latest_valid(tmp_path).step == 200


def test_find_latest_valid_reports_unverified_newer_dirs(tmp_path) -> None:
    make_checkpoint(tmp_path, 100)
    make_checkpoint(tmp_path, 200)
    write_latest(tmp_path, 100)  # as after a crash between the rename and the latest update
    result = find_latest_valid(tmp_path)
    assert result.step == 100
    assert result.skipped == [(tmp_path / "step_00000200", "newer than step_00000100, which latest names; not used")]


def test_find_latest_valid_with_nothing_valid(tmp_path) -> None:
    assert find_latest_valid(tmp_path) == find_latest_valid(tmp_path / "missing")
    only = make_checkpoint(tmp_path, 5)
    (only / "manifest.json").unlink()
    result = find_latest_valid(tmp_path)
    assert result.path is None and result.step is None
    assert result.skipped == [(only, "named by latest: manifest.json missing")]


def test_prune_keep_last_keep_every_and_protect(tmp_path) -> None:
    for step in range(1, 11):
        make_checkpoint(tmp_path, step)
    removed = prune(tmp_path, keep_last=3, keep_every=4, protect={2})
    assert removed == [1, 3, 5, 6, 7]
    assert list_checkpoints(tmp_path) == [2, 4, 8, 9, 10]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_prune_never_removes_the_newest_valid(tmp_path) -> None:
    for step in (1, 2, 3):
        make_checkpoint(tmp_path, step)
    (tmp_path / "step_00000003" / "manifest.json").unlink()
    assert prune(tmp_path, keep_last=1) == [1]
    assert list_checkpoints(tmp_path) == [2, 3]
    assert find_latest_valid(tmp_path).step == 2
    assert prune(tmp_path, keep_last=0) == [3]
    assert list_checkpoints(tmp_path) == [2]


def test_prune_rejects_bad_arguments(tmp_path) -> None:
    with pytest.raises(ValueError):
        prune(tmp_path, keep_last=-1)
    with pytest.raises(ValueError):
        prune(tmp_path, keep_last=1, keep_every=0)


def test_manager_prunes_after_each_save_and_protects(tmp_path) -> None:
    protected = {1}
    manager = CheckpointManager(tmp_path, keep_last=2, keep_every=5, protect=lambda: protected)
    for step in range(1, 8):
        manager.save({"s.json": {"step": step}}, step)
    assert list_checkpoints(tmp_path) == [1, 5, 6, 7]


def test_manifest_sha256_of_a_directory_without_manifest(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="manifest.json missing"):
        manifest_sha256(tmp_path)
