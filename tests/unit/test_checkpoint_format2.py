"""Manifest format 2: per-chunk BLAKE3 digests beside each file's sha256, verified on all
cores; format 1 manifests (sha256 only) still verify and load."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from blake3 import blake3

from relaytrain.checkpoint import (
    CheckpointManager,
    commit_checkpoint_dir,
    load_checkpoint,
    make_temp_dir,
    parse_manifest,
    verify,
    write_manifest,
)
from relaytrain.checkpoint._hashio import CHUNK_BYTES, Digester, file_entry
from relaytrain.errors import CheckpointError

C = CHUNK_BYTES
SIZES = {"empty.bin": 0, "one.bin": 1, "exact1.bin": C, "exact3.bin": 3 * C, "over2.bin": 2 * C + 1}


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that differ from chunk to chunk."""
    block = hashlib.sha256(f"{seed}".encode()).digest() * (1 << 15)  # 1 MiB
    return (block * (size // len(block) + 1))[:size] if size else b""


def expected_entry(data: bytes) -> dict:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "chunk_bytes": C,
            "blake3": [blake3(data[i:i + C]).hexdigest() for i in range(0, len(data), C)]}


@pytest.fixture(scope="module")
def datas() -> dict[str, bytes]:
    return {name: payload(size, seed) for seed, (name, size) in enumerate(SIZES.items())}


def test_entries_cut_files_into_chunks_at_every_boundary(tmp_path, datas) -> None:
    """Empty file: no chunk; one byte: one; exactly N chunks: N, none empty; one byte over:
    a last chunk of one byte. The save path (bytes written and hashed on the way) and the
    hash-a-folder path (write_manifest) give the same entries."""
    saved = CheckpointManager(tmp_path / "saved").save(dict(datas), 1)
    folder = tmp_path / "folder"
    folder.mkdir()
    for name, data in datas.items():
        (folder / name).write_bytes(data)
    hashed = write_manifest(folder, 1)
    on_disk = json.loads((saved / "manifest.json").read_bytes())
    assert on_disk["format_version"] == hashed["format_version"] == 2
    for name, data in datas.items():
        assert on_disk["files"][name] == hashed["files"][name] == expected_entry(data), name
    assert [len(on_disk["files"][name]["blake3"]) for name in SIZES] == [0, 1, 1, 3, 3]
    assert verify(saved).ok and verify(folder).ok
    assert load_checkpoint(saved) == datas


def test_a_digester_fed_in_odd_pieces_matches_one_pass(datas) -> None:
    data = datas["over2.bin"]
    cuts = [0, 7, (1 << 20) + 3, C - 1, C, C + 5, 2 * C + 1]
    for stable in (True, False):
        with Digester(stable=stable) as digester:
            for start, stop in zip(cuts, cuts[1:], strict=False):
                digester.update(bytearray(data[start:stop]))
            assert digester.entry() == expected_entry(data), stable


def test_a_torch_save_file_larger_than_a_chunk_gets_the_same_entry(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    state = {"opt.pt": {"m": torch.arange(3 * C // 8 + 11, dtype=torch.float64)}}
    path = CheckpointManager(tmp_path).save(state, 1)
    entry = json.loads((path / "manifest.json").read_bytes())["files"]["opt.pt"]
    assert entry == file_entry(path / "opt.pt") == expected_entry((path / "opt.pt").read_bytes())
    assert len(entry["blake3"]) == 4
    assert torch.equal(load_checkpoint(path)["opt.pt"]["m"], state["opt.pt"]["m"])


@pytest.fixture
def three_chunks(tmp_path, datas) -> Path:
    """A checkpoint with a 3-chunk file whose last chunk is one byte, and a small file."""
    return CheckpointManager(tmp_path).save({"big.bin": datas["over2.bin"], "small.json": {"a": 1}}, 5)


def flip(path: Path, position: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(position)
        byte = handle.read(1)
        handle.seek(position)
        handle.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize(("position", "where"), [
    (C + C // 2, f"bytes {C}-{2 * C}"),           # the middle chunk
    (2 * C, f"bytes {2 * C}-{2 * C + 1}"),        # the last, partial chunk (one byte)
    (0, f"bytes 0-{C}"),                          # the first byte
])
def test_a_flipped_byte_anywhere_fails_verify_and_load_naming_the_file_and_chunk(three_chunks, position,
                                                                                 where) -> None:
    flip(three_chunks / "big.bin", position)
    check = verify(three_chunks)
    assert not check.ok and check.reason == f"big.bin: blake3 mismatch in {where}"
    with pytest.raises(CheckpointError, match=f"big.bin: blake3 mismatch in {where}"):
        load_checkpoint(three_chunks)


def test_a_truncated_or_extended_file_fails_on_its_size(three_chunks) -> None:
    target = three_chunks / "big.bin"
    os.truncate(target, 2 * C)
    assert verify(three_chunks).reason == f"big.bin: size {2 * C} != {2 * C + 1}"
    with pytest.raises(CheckpointError, match=f"big.bin: size {2 * C} != {2 * C + 1}"):
        load_checkpoint(three_chunks)
    with open(target, "ab") as handle:
        handle.write(b"xy")
    assert verify(three_chunks).reason == f"big.bin: size {2 * C + 2} != {2 * C + 1}"


@pytest.mark.parametrize(("change", "problem"), [
    (lambda e: e.update(blake3=e["blake3"][:-1]), "2 blake3 digests for 33554433 bytes in chunks of 16777216"),
    (lambda e: e.update(chunk_bytes=0), "chunk_bytes must be a positive integer, got 0"),
    (lambda e: e.update(chunk_bytes=True), "chunk_bytes must be a positive integer, got True"),
    (lambda e: e.pop("blake3"), "blake3 must be a list"),
    (lambda e: e["blake3"].__setitem__(0, "XYZ"), "blake3 must be a list"),
])
def test_a_format_2_entry_with_bad_chunks_is_refused_naming_the_file(three_chunks, change, problem) -> None:
    manifest = json.loads((three_chunks / "manifest.json").read_bytes())
    change(manifest["files"]["big.bin"])
    with pytest.raises(CheckpointError, match=f"bad entry for big.bin: {problem}"):
        parse_manifest(json.dumps(manifest).encode())


def write_format_1(folder: Path, step: int) -> Path:
    """Commit ``folder`` with a hand-written format-1 manifest, as relaytrain wrote before
    format 2: ``{"size", "sha256"}`` per file."""
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size,
                                                "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in sorted(folder.rglob("*")) if p.is_file()}
    manifest = {"format_version": 1, "step": step, "epoch": None, "created_at": "2025-01-01T00:00:00+00:00",
                "files": files, "metadata": {}}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return folder


def test_a_format_1_checkpoint_still_verifies_loads_and_catches_corruption(tmp_path, datas) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    folder = tmp_path / "step_00000003"
    (folder / "model").mkdir(parents=True)
    weights = {"w": torch.arange(C // 4 + 3, dtype=torch.float32)}
    save_file(weights, folder / "model" / "model.safetensors")
    (folder / "big.bin").write_bytes(datas["over2.bin"])
    (folder / "trainer_state.json").write_text('{"step": 3}')
    write_format_1(folder, 3)
    assert verify(folder).ok
    loaded = load_checkpoint(folder)
    assert torch.equal(loaded["model/model.safetensors"]["w"], weights["w"])
    assert loaded["big.bin"] == datas["over2.bin"] and loaded["trainer_state.json"] == {"step": 3}
    flip(folder / "big.bin", 2 * C)
    assert verify(folder).reason == "big.bin: sha256 mismatch"
    with pytest.raises(CheckpointError, match="big.bin: sha256 mismatch"):
        load_checkpoint(folder)


def test_committing_a_folder_with_an_empty_file_writes_format_2(tmp_path) -> None:
    tmp = make_temp_dir(tmp_path, 9)
    (tmp / "empty").write_bytes(b"")
    path = commit_checkpoint_dir(tmp, tmp_path, 9)
    entry = json.loads((path / "manifest.json").read_bytes())["files"]["empty"]
    assert entry == expected_entry(b"") and entry["blake3"] == []
    assert verify(path).ok and load_checkpoint(path) == {"empty": b""}
