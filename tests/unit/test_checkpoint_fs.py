"""The durable-write primitives every file the project writes goes through:
``atomic_write_text`` / ``atomic_write_bytes`` and ``staged_dir`` (a process killed mid-write:
tests/integration/test_checkpoint_crash.py)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from relaytrain.checkpoint import TEMP_PREFIX, atomic_write_bytes, atomic_write_text, discard_on_error, staged_dir


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_text_creates_and_replaces(tmp_path) -> None:
    path = tmp_path / "state.json"
    atomic_write_text(path, "one\n")
    assert path.read_text() == "one\n"
    atomic_write_text(path, "twö\n")
    assert path.read_bytes() == "twö\n".encode()
    assert _entries(tmp_path) == ["state.json"]


def test_atomic_write_bytes_sets_the_mode(tmp_path) -> None:
    path = tmp_path / "worker.env"
    atomic_write_bytes(path, b"RELAY_TOKEN=secret\n", mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == b"RELAY_TOKEN=secret\n"


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failing_write_leaves_the_old_file_intact(tmp_path, monkeypatch, failing) -> None:
    path = tmp_path / "summary.json"
    atomic_write_text(path, "old\n")

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "disk said no")

    monkeypatch.setattr(os, failing, broken)  # the disk, at the boundary
    with pytest.raises(OSError, match="disk said no"):
        atomic_write_text(path, "new\n")
    monkeypatch.undo()
    assert path.read_text() == "old\n"
    assert _entries(tmp_path) == ["summary.json"]


def test_staged_dir_publishes_a_complete_folder(tmp_path) -> None:
    target = tmp_path / "deep" / "step_00000005"
    with staged_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(f"{TEMP_PREFIX}step_00000005-")
        assert not target.exists()
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.bin").write_bytes(b"a")
        (tmp / "b.json").write_text("{}")
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == ["b.json", "sub", "sub/a.bin"]
    assert _entries(target.parent) == ["step_00000005"]


def test_staged_dir_replaces_an_existing_target(tmp_path) -> None:
    target = tmp_path / "evals"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with staged_dir(target, fsync=False) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _entries(target) == ["new.txt"]
    assert _entries(tmp_path) == ["evals"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_exception_inside_staged_dir_leaves_no_temp_and_no_target(tmp_path, error) -> None:
    target = tmp_path / "step_00000007"
    with pytest.raises(type(error)):
        with staged_dir(target) as tmp:
            (tmp / "half.bin").write_bytes(b"partial")
            raise error
    assert _entries(tmp_path) == []


def test_an_exception_inside_staged_dir_keeps_the_old_target(tmp_path) -> None:
    target = tmp_path / "step_00000007"
    target.mkdir()
    (target / "good.bin").write_bytes(b"good")
    with pytest.raises(RuntimeError):
        with staged_dir(target) as tmp:
            (tmp / "good.bin").write_bytes(b"half")
            raise RuntimeError("crash")
    assert (target / "good.bin").read_bytes() == b"good"
    assert _entries(tmp_path) == ["step_00000007"]


def test_discard_on_error_removes_a_temporary_file_or_folder(tmp_path) -> None:
    part = tmp_path / f"{TEMP_PREFIX}x.part"
    with pytest.raises(ValueError), discard_on_error(part):
        part.write_bytes(b"x")
        raise ValueError
    folder = tmp_path / f"{TEMP_PREFIX}folder"
    with pytest.raises(ValueError), discard_on_error(folder):
        (folder / "in").mkdir(parents=True)
        raise ValueError
    kept = tmp_path / f"{TEMP_PREFIX}kept"
    with discard_on_error(kept):
        kept.write_bytes(b"fine")
    assert _entries(tmp_path) == [f"{TEMP_PREFIX}kept"]
