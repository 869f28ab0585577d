"""CheckpointManager with bytes and JSON state: sync and async saves, errors, in-flight limit."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from relaytrain.checkpoint import CheckpointManager, list_checkpoints, load_checkpoint, read_latest, verify
from relaytrain.errors import CheckpointError

STATE = {
    "trainer_state.json": {"step": 3, "cursor": [1, 2], "rng": {"b": 2, "a": 1}},
    "blob.bin": b"\x00\x01binary",
    "nested/deeper/extra.dat": bytearray(b"more"),
}


def no_temporaries(out: Path) -> bool:
    return not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_sync_save_and_load_round_trip(tmp_path) -> None:
    commits: list[tuple[Path, int]] = []
    manager = CheckpointManager(tmp_path, on_commit=lambda path, step: commits.append((path, step)))
    path = manager.save(STATE, 3, epoch=1, metadata={"loss": 0.25})
    assert path == tmp_path / "step_00000003"
    assert commits == [(path, 3)]
    assert manager.last_committed == path
    assert read_latest(tmp_path) == "step_00000003"
    check = verify(path)
    assert check.ok and check.manifest["epoch"] == 1 and check.manifest["metadata"] == {"loss": 0.25}
    loaded = manager.load(path)
    assert loaded == {
        "trainer_state.json": STATE["trainer_state.json"],
        "blob.bin": b"\x00\x01binary",
        "nested/deeper/extra.dat": b"more",
    }
    assert no_temporaries(tmp_path)


def test_json_files_are_deterministic(tmp_path) -> None:
    manager = CheckpointManager(tmp_path)
    first = manager.save({"s.json": {"b": 1, "a": {"d": 2, "c": 3}}}, 1)
    second = manager.save({"s.json": {"a": {"c": 3, "d": 2}, "b": 1}}, 2)
    assert (first / "s.json").read_bytes() == (second / "s.json").read_bytes()


def test_callable_value_writes_its_own_file_or_folder(tmp_path) -> None:
    def write_file(path: Path) -> None:
        path.write_text("custom")

    def write_folder(path: Path) -> None:
        path.mkdir()
        (path / "config.json").write_text("{}")
        (path / "weights.bin").write_bytes(b"w")

    path = CheckpointManager(tmp_path).save({"custom.txt": write_file, "hf_model": write_folder}, 9)
    assert sorted(verify(path).manifest["files"]) == ["custom.txt", "hf_model/config.json", "hf_model/weights.bin"]
    assert load_checkpoint(path)["hf_model/weights.bin"] == b"w"


def test_load_refuses_an_invalid_checkpoint_with_the_reason(tmp_path) -> None:
    path = CheckpointManager(tmp_path).save(STATE, 1)
    (path / "blob.bin").write_bytes(b"\x00\x01BINARY")
    with pytest.raises(CheckpointError, match="blob.bin: blake3 mismatch in bytes 0-8"):
        load_checkpoint(path)
    (path / "blob.bin").write_bytes(b"short")
    with pytest.raises(CheckpointError, match="blob.bin: size 5 != 8"):
        load_checkpoint(path)


@pytest.mark.parametrize("name", ["/abs.bin", "../up.bin", "a/../b.bin", "manifest.json", "", "a//b"])
def test_bad_file_names_are_refused(tmp_path, name) -> None:
    with pytest.raises(ValueError):
        CheckpointManager(tmp_path).save({name: b"x"}, 1)
    assert list_checkpoints(tmp_path) == []


def test_unserialisable_value_fails_and_leaves_nothing(tmp_path) -> None:
    manager = CheckpointManager(tmp_path)
    with pytest.raises(CheckpointError, match="x.bin: cannot store a value of type int"):
        manager.save({"ok.json": {}, "x.bin": 123}, 1)
    with pytest.raises(CheckpointError, match="s.json: not JSON-serialisable"):
        manager.save({"s.json": {1, 2}}, 1)
    assert list_checkpoints(tmp_path) == [] and no_temporaries(tmp_path)


def test_manager_cleans_stale_temporaries_on_start(tmp_path) -> None:
    (tmp_path / ".tmp-step_00000005-0000").mkdir()
    CheckpointManager(tmp_path)
    assert no_temporaries(tmp_path)


def test_async_save_commits_in_background_and_snapshots_state(tmp_path) -> None:
    commits: list[int] = []
    state = {"s.json": {"values": [1, 2, 3]}}
    with CheckpointManager(tmp_path, async_save=True, on_commit=lambda p, s: commits.append(s)) as manager:
        assert manager.save(state, 1) is None
        state["s.json"]["values"].append(4)  # the snapshot was taken before save() returned
        assert manager.wait() == tmp_path / "step_00000001"
        manager.save(state, 2)
    assert commits == [1, 2]
    assert load_checkpoint(tmp_path / "step_00000001")["s.json"] == {"values": [1, 2, 3]}
    assert load_checkpoint(tmp_path / "step_00000002")["s.json"] == {"values": [1, 2, 3, 4]}
    assert read_latest(tmp_path) == "step_00000002"


def test_async_writer_error_surfaces_at_the_next_call(tmp_path) -> None:
    manager = CheckpointManager(tmp_path, async_save=True)
    manager.save({"x.bin": 123}, 1)
    with pytest.raises(CheckpointError, match="asynchronous save of step 1 failed: x.bin: cannot store"):
        manager.wait()
    assert manager.wait() is None  # reported once
    manager.save({"x.bin": 123}, 2)
    with pytest.raises(CheckpointError, match="step 2"):
        manager.save({"x.bin": b"ok"}, 3)
    manager.save({"x.bin": b"ok"}, 4)
    manager.save({"x.bin": 123}, 5)
    with pytest.raises(CheckpointError, match="step 5"):
        manager.close()
    assert list_checkpoints(tmp_path) == [4] and no_temporaries(tmp_path)
    with pytest.raises(CheckpointError, match="closed"):
        manager.save({"x.bin": b"ok"}, 6)


def test_async_on_commit_error_surfaces(tmp_path) -> None:
    def fail(path: Path, step: int) -> None:
        raise RuntimeError("commander unreachable")

    manager = CheckpointManager(tmp_path, async_save=True, on_commit=fail)
    manager.save({"a.bin": b"1"}, 1)
    with pytest.raises(CheckpointError, match="commander unreachable"):
        manager.close()


def test_async_refuses_callable_values(tmp_path) -> None:
    manager = CheckpointManager(tmp_path, async_save=True)
    with pytest.raises(ValueError, match="synchronous"):
        manager.save({"f.bin": lambda path: path.write_bytes(b"")}, 1)


def test_at_most_one_async_save_in_flight(tmp_path) -> None:
    entered = threading.Event()
    release = threading.Event()
    active = 0
    most_active = 0
    order: list[int] = []
    guard = threading.Lock()

    def on_commit(path: Path, step: int) -> None:
        nonlocal active, most_active
        with guard:
            active += 1
            most_active = max(most_active, active)
        order.append(step)
        if step == 1:
            entered.set()
            release.wait()
        with guard:
            active -= 1

    manager = CheckpointManager(tmp_path, async_save=True, on_commit=on_commit)
    manager.save({"a.json": {"v": 1}}, 1)
    assert entered.wait(timeout=30)
    second = threading.Thread(target=manager.save, args=({"a.json": {"v": 2}}, 2))
    second.start()
    second.join(timeout=0.2)
    # The second save is blocked behind the first: its writing has not even started.
    assert second.is_alive()
    assert not (tmp_path / "step_00000002").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-step_00000002")]
    release.set()
    second.join(timeout=30)
    assert not second.is_alive()
    manager.close()
    assert order == [1, 2] and most_active == 1
    assert list_checkpoints(tmp_path) == [1, 2]


def test_manager_rejects_bad_retention(tmp_path) -> None:
    with pytest.raises(ValueError):
        CheckpointManager(tmp_path, keep_last=0)
    with pytest.raises(ValueError):
        CheckpointManager(tmp_path, keep_every=0)


def test_async_snapshots_reusing_memory_write_what_each_save_saw(tmp_path) -> None:
    """Later async saves copy into the previous snapshot's buffers: every file must still hold
    the state as it was at its own save, including when tensors alias one another."""
    torch = pytest.importorskip("torch")
    weights = torch.zeros(64, 32)
    state = {"model.safetensors": {"w": weights, "tied": weights}, "optimizer.pt": {"m": torch.zeros(8)}}
    with CheckpointManager(tmp_path, async_save=True) as manager:
        for step in range(1, 6):
            weights.add_(step)
            state["optimizer.pt"]["m"].fill_(step * 10)
            manager.save(state, step)
            weights.mul_(-1)  # mutate right away: the snapshot, not the live tensor, must be written
        manager.wait()
    expected = 0.0
    for step in range(1, 6):
        expected = expected + step
        loaded = load_checkpoint(tmp_path / f"step_{step:08d}")
        assert torch.equal(loaded["model.safetensors"]["w"], torch.full((64, 32), expected))
        assert torch.equal(loaded["model.safetensors"]["tied"], loaded["model.safetensors"]["w"])
        assert torch.equal(loaded["optimizer.pt"]["m"], torch.full((8,), float(step * 10)))
        expected = -expected
