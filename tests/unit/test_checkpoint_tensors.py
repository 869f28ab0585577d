"""Tensor state: safetensors and torch.save files, tied tensors, async snapshots."""

from __future__ import annotations

import random

import pytest

from relaytrain.checkpoint import CheckpointManager, load_checkpoint, verify
from relaytrain.errors import CheckpointError

torch = pytest.importorskip("torch")


def model_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    embed = torch.randn(32, 8, generator=generator)
    return {
        "embed.weight": embed,
        "lm_head.weight": embed,  # tied
        "layer.weight": torch.randn(8, 8, generator=generator).t(),  # not contiguous
        "layer.bias": torch.randn(8, generator=generator, dtype=torch.float64),
        "norm.weight": torch.ones(8, dtype=torch.bfloat16),
        "half": torch.randn(3, generator=generator).half(),
        "steps": torch.arange(5, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "bytes": torch.arange(7, dtype=torch.uint8),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }


def full_state() -> dict[str, object]:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    return {
        "model/model.safetensors": model_state(),
        "optimizer.pt": optimizer.state_dict(),
        "rng.pt": {"python": random.getstate(), "torch": torch.get_rng_state()},
        "trainer_state.json": {"step": 10, "cursor": 123},
    }


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype, name
        assert got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name


def check_loaded(loaded: dict[str, object], state: dict[str, object]) -> None:
    assert_same_tensors(loaded["model/model.safetensors"], state["model/model.safetensors"])
    optimizer = loaded["optimizer.pt"]
    want = state["optimizer.pt"]
    assert optimizer["param_groups"] == want["param_groups"]
    for key, slots in want["state"].items():
        for slot, value in slots.items():
            assert torch.equal(optimizer["state"][key][slot], value)
    assert loaded["rng.pt"]["python"] == state["rng.pt"]["python"]
    assert torch.equal(loaded["rng.pt"]["torch"], state["rng.pt"]["torch"])
    assert loaded["trainer_state.json"] == state["trainer_state.json"]


def test_sync_round_trip_with_tensors(tmp_path) -> None:
    state = full_state()
    path = CheckpointManager(tmp_path).save(state, 10)
    assert verify(path).ok
    check_loaded(load_checkpoint(path), state)


def test_async_round_trip_with_tensors(tmp_path) -> None:
    state = full_state()
    with CheckpointManager(tmp_path, async_save=True) as manager:
        manager.save(state, 10)
        path = manager.wait()
    check_loaded(manager.load(path), state)


def test_async_save_snapshots_tensors_before_returning(tmp_path) -> None:
    weights = {"w": torch.zeros(1000)}
    manager = CheckpointManager(tmp_path, async_save=True)
    manager.save({"model.safetensors": weights}, 1)
    weights["w"].add_(1.0)  # training goes on while the writer writes
    manager.close()
    loaded = load_checkpoint(tmp_path / "step_00000001")["model.safetensors"]["w"]
    assert torch.equal(loaded, torch.zeros(1000))


def test_tied_tensors_load_as_equal_independent_tensors(tmp_path) -> None:
    state = model_state()
    path = CheckpointManager(tmp_path).save({"m.safetensors": state}, 1)
    loaded = load_checkpoint(path)["m.safetensors"]
    assert torch.equal(loaded["embed.weight"], loaded["lm_head.weight"])
    loaded["embed.weight"].add_(1)
    assert not torch.equal(loaded["embed.weight"], loaded["lm_head.weight"])


def test_files_are_readable_by_the_safetensors_library_and_back(tmp_path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    state = model_state()
    path = CheckpointManager(tmp_path).save({"m.safetensors": state}, 1)
    assert_same_tensors(safetensors_torch.load_file(path / "m.safetensors"), state)

    other = tmp_path / "from_library"
    other.mkdir()
    plain = {name: tensor.contiguous() for name, tensor in state.items() if name != "lm_head.weight"}
    safetensors_torch.save_file(plain, other / "m.safetensors", metadata={"format": "pt"})
    from relaytrain.checkpoint import write_manifest

    write_manifest(other, 1)
    assert_same_tensors(load_checkpoint(other)["m.safetensors"], plain)


def test_corrupt_tensor_file_is_reported_as_a_digest_mismatch(tmp_path) -> None:
    path = CheckpointManager(tmp_path).save({"m.safetensors": model_state()}, 1)
    target = path / "m.safetensors"
    for position in (3, 40, target.stat().st_size - 1):  # header length, header JSON, data
        data = bytearray(target.read_bytes())
        data[position] ^= 0xFF
        target.write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match="m.safetensors: blake3 mismatch in bytes 0-"):
            load_checkpoint(path)
        data[position] ^= 0xFF
        target.write_bytes(bytes(data))
    assert verify(path).ok


def test_safetensors_value_must_be_a_dict_of_tensors(tmp_path) -> None:
    manager = CheckpointManager(tmp_path)
    with pytest.raises(CheckpointError, match="m.safetensors: w: expected a torch.Tensor"):
        manager.save({"m.safetensors": {"w": [1.0]}}, 1)
    with pytest.raises(CheckpointError, match="expected a dict of tensors"):
        manager.save({"m.safetensors": torch.ones(2)}, 1)


def test_large_tensor_spans_many_io_chunks(tmp_path) -> None:
    big = {"w": torch.randn(9 * (1 << 20))}  # 36 MiB: several 16 MiB chunks, hashed in the pipeline
    path = CheckpointManager(tmp_path).save({"m.safetensors": big}, 1)
    assert verify(path).ok
    assert_same_tensors(load_checkpoint(path)["m.safetensors"], big)


def test_modules_are_saved_as_objects_not_called(tmp_path) -> None:
    module = torch.nn.Linear(2, 2)
    path = CheckpointManager(tmp_path).save({"module.pt": module}, 1)
    loaded = load_checkpoint(path)["module.pt"]
    assert torch.equal(loaded.weight, module.weight)


def test_loaded_tensors_are_private_and_outlive_the_files(tmp_path) -> None:
    state = {"w": torch.arange(1000, dtype=torch.float32)}
    path = CheckpointManager(tmp_path).save({"m.safetensors": state}, 1)
    loaded = load_checkpoint(path)["m.safetensors"]["w"]
    loaded.mul_(2)  # copy-on-write: the file is not changed
    assert verify(path).ok
    import shutil

    shutil.rmtree(path)
    assert torch.equal(loaded, torch.arange(1000, dtype=torch.float32) * 2)


def test_misaligned_tensors_from_other_writers_are_copied_out(tmp_path) -> None:
    import json
    import struct

    from relaytrain.checkpoint import write_manifest

    header = json.dumps({"b": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
                         "f": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]}}).encode()
    header += b" " * (-len(header) % 8)
    data = struct.pack("<Q", len(header)) + header + bytes([1, 2, 3]) + struct.pack("<2f", 1.5, -2.0)
    (tmp_path / "m.safetensors").write_bytes(data)
    write_manifest(tmp_path, 0)
    loaded = load_checkpoint(tmp_path)["m.safetensors"]
    assert loaded["b"].tolist() == [1, 2, 3]
    assert loaded["f"].tolist() == [1.5, -2.0]


def test_garbage_that_matches_its_manifest_is_reported_unreadable(tmp_path) -> None:
    from relaytrain.checkpoint import write_manifest

    (tmp_path / "m.safetensors").write_bytes(b"\xff" * 64)
    write_manifest(tmp_path, 0)
    with pytest.raises(CheckpointError, match="m.safetensors: intact but unreadable"):
        load_checkpoint(tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_round_trip_sync_and_async(tmp_path) -> None:
    weights = {"w": torch.randn(1024, 1024, device="cuda"), "b": torch.randn(10, device="cuda").half()}
    state = {"m.safetensors": weights, "optimizer.pt": {"exp_avg": torch.ones(3, device="cuda")}}
    expected = {name: tensor.cpu() for name, tensor in weights.items()}

    path = CheckpointManager(tmp_path / "sync").save(state, 1)
    loaded = load_checkpoint(path)
    assert_same_tensors(loaded["m.safetensors"], expected)
    assert loaded["optimizer.pt"]["exp_avg"].device.type == "cpu"

    manager = CheckpointManager(tmp_path / "async", async_save=True)
    manager.save(state, 1)
    weights["w"].add_(1.0)  # training goes on on the GPU while the writer writes
    path = manager.wait()
    manager.close()
    assert_same_tensors(load_checkpoint(path)["m.safetensors"], expected)
