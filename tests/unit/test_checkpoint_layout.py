"""Checkpoint names, listing, temporaries and ``latest`` (that they import without torch is tested
in tests/integration/test_torch_free.py)."""

from __future__ import annotations

import pytest

from relaytrain.checkpoint import (
    clean_temp,
    list_checkpoints,
    make_temp_dir,
    parse_step,
    read_latest,
    step_dir_name,
    write_latest,
)
from relaytrain.errors import CheckpointError


def test_step_dir_name_and_parse_step_round_trip() -> None:
    assert step_dir_name(200) == "step_00000200"
    assert step_dir_name(0) == "step_00000000"
    assert step_dir_name(123456789) == "step_123456789"
    for step in (0, 7, 200, 10**8 + 3):
        assert parse_step(step_dir_name(step)) == step


@pytest.mark.parametrize("name", ["step_200", "step_0000020x", ".tmp-step_00000200-ab12", "latest",
                                  "step_00000200.old", "xstep_00000200", ""])
def test_parse_step_rejects_other_names(name: str) -> None:
    assert parse_step(name) is None


@pytest.mark.parametrize("step", [-1, 1.0, "3", True])
def test_step_dir_name_rejects_bad_steps(step: object) -> None:
    with pytest.raises(ValueError):
        step_dir_name(step)  # type: ignore[arg-type]


def test_list_checkpoints_sorted_ignoring_temporaries_and_files(tmp_path) -> None:
    for step in (300, 100, 200):
        (tmp_path / step_dir_name(step)).mkdir()
    (tmp_path / ".tmp-step_00000400-abcd").mkdir()
    (tmp_path / "step_00000500").write_text("a file, not a checkpoint")
    (tmp_path / "notes").mkdir()
    assert list_checkpoints(tmp_path) == [100, 200, 300]
    assert list_checkpoints(tmp_path / "missing") == []


def test_make_temp_dir_and_clean_temp(tmp_path) -> None:
    out = tmp_path / "out"
    first = make_temp_dir(out, 5)
    second = make_temp_dir(out, 5)
    assert first != second
    assert first.name.startswith(".tmp-step_00000005-")
    (first / "partial.bin").write_bytes(b"x")
    (out / ".tmp-latest-1234").write_text("step_00000005\n")
    (out / step_dir_name(3)).mkdir()
    removed = clean_temp(out)
    assert sorted(path.name for path in removed) == sorted([first.name, second.name, ".tmp-latest-1234"])
    assert [path.name for path in out.iterdir()] == [step_dir_name(3)]
    assert clean_temp(tmp_path / "missing") == []


def test_latest_is_written_atomically_and_read_back(tmp_path) -> None:
    assert read_latest(tmp_path) is None
    write_latest(tmp_path, 200)
    assert (tmp_path / "latest").read_text() == "step_00000200\n"
    assert read_latest(tmp_path) == "step_00000200"
    write_latest(tmp_path, 400)
    assert read_latest(tmp_path) == "step_00000400"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["latest"]


def test_read_latest_rejects_garbage(tmp_path) -> None:
    (tmp_path / "latest").write_text("../../etc\n")
    with pytest.raises(CheckpointError, match="does not name a checkpoint"):
        read_latest(tmp_path)
