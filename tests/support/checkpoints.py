"""Small real checkpoints for the store tests, and the ways they get damaged."""

from __future__ import annotations

from pathlib import Path

from relaytrain.checkpoint import CheckpointManager

STATE = {"model/weights.bin": b"w" * 5000, "optimizer.bin": b"o" * 300, "trainer_state.json": {"step": 100}}


def checkpoint(out: Path, step: int, **changes: object) -> Path:
    """A committed checkpoint of ``STATE`` (with ``changes``) at ``step`` under ``out`` (epoch 1)."""
    path = CheckpointManager(out).save({**STATE, **changes}, step, epoch=1)
    assert path is not None
    return path


def flip_byte(path: Path, position: int = 7) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


def no_temporaries(folder: Path) -> bool:
    return not folder.exists() or not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]
