"""Checkpoint I/O benchmark: save, restore and async-save blocking time of a ~1 GB state,
each divided by what the machine itself does, measured in the same run.

    python -m bench.checkpoint_io                         # 1024 MiB state, 3 rounds
    python -m bench.checkpoint_io --size-mb 256 --repeats 5 --dir /mnt/nvme

| ratio            | ours                                  | divided by                          | target  |
|------------------|---------------------------------------|-------------------------------------|---------|
| save             | ``CheckpointManager.save`` (sync):    | ``dd if=/dev/zero bs=16M            | >= 0.75 |
|                  | write, sha256, fsync, manifest,       | conv=fsync`` of the same size       |         |
|                  | rename, ``latest``                    |                                     |         |
| restore (cold)   | ``load_checkpoint``: BLAKE3 of every  | ``dd if=<the checkpoint's files>    | >= 0.80 |
|                  | 16 MiB chunk on all cores (manifest   | bs=16M of=/dev/null``; both after   |         |
|                  | format 2), then the tensors           |                                     |         |
| restore f1 (cold)| the same checkpoint with its manifest | the same ``dd``, cold               | (info)  |
|                  | rewritten as format 1: one sha256 per |                                     |         |
|                  | file, one core per file               |                                     |         |
|                  |                                       | evicting the files from page cache  |         |
| restore (warm)   | the same, files in the page cache     | the same ``dd``, files cached       | (info)  |
| async blocking   | time ``save()`` blocks, async_save    | ``tensor.clone()`` of every tensor  | <= 1.5  |

Cold reads evict the files with ``posix_fadvise(POSIX_FADV_DONTNEED)`` (clean after their
fsync, so the kernel drops them; no root needed). dd and our save alternate and each writes
into the space the previous one freed, after one unmeasured warm-up write, because on
thin-provisioned virtual disks a first write to never-used blocks is several times slower.
Reference rows: sha256 of the state's bytes in memory on one core (the ceiling of a format-1
verified load of a single file), BLAKE3 of its 16 MiB chunks in memory on all cores (the
ceiling of a format-2 load), and ``safetensors.torch.save_file`` + fsync + a sha256 pass (what a save
would cost with the library writer) when safetensors is installed. Medians over ``--repeats``
rounds; the load average is printed, since other processes on the machine skew everything.
All files live in a temporary folder under ``--dir``, deleted at the end. Needs torch.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MB = 1 << 20


def build_state(size_mb: int, tensor_mb: int, shards: int) -> dict[str, dict[str, Any]]:
    """``size_mb`` of float32 tensors of ``tensor_mb`` each, spread over ``shards`` files."""
    import torch

    count = max(1, size_mb // tensor_mb)
    numel = tensor_mb * MB // 4
    generator = torch.Generator().manual_seed(0)
    files: dict[str, dict[str, Any]] = {}
    for index in range(count):
        name = f"model/model-{index % shards + 1:05d}-of-{shards:05d}.safetensors"
        files.setdefault(name, {})[f"layers.{index}.weight"] = torch.randn(numel, generator=generator)
    return files


def evict(files: list[Path]) -> None:
    """Drop the (clean) pages of ``files`` from the page cache."""
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(fn: Callable[..., object], *args: Any, **kwargs: Any) -> float:
    """Seconds ``fn(*args, **kwargs)`` takes."""
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def dd_write(path: Path, size_mb: int) -> float:
    """Seconds for dd to write ``size_mb`` of zeros to ``path`` and fsync it; the file is removed."""
    command = ["dd", "if=/dev/zero", f"of={path}", "bs=16M", f"count={size_mb // 16}", "conv=fsync"]
    seconds = timed(subprocess.run, command, check=True, capture_output=True)
    path.unlink()
    return seconds


def dd_read(files: list[Path]) -> float:
    """Seconds for dd to read ``files`` to /dev/null."""
    start = time.perf_counter()
    for file in files:
        subprocess.run(["dd", f"if={file}", "of=/dev/null", "bs=16M"], check=True, capture_output=True)
    return time.perf_counter() - start


def sha256_of(tensors: list[Any]) -> str:
    """sha256 of the tensors' bytes on one core: the ceiling of any verified single-file load."""
    from relaytrain.checkpoint.tensors import tensor_memory

    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor_memory(tensor))
    return digest.hexdigest()


def blake3_chunks_of(tensors: list[Any]) -> list[str]:
    """BLAKE3 of every 16 MiB chunk of the tensors' bytes, on all cores: the ceiling of a
    format-2 verified load."""
    from concurrent.futures import ThreadPoolExecutor

    from blake3 import blake3

    from relaytrain.checkpoint._hashio import CHUNK_BYTES, HASH_WORKERS
    from relaytrain.checkpoint.tensors import tensor_memory

    pieces = [memoryview(tensor_memory(t)).cast("B") for t in tensors]
    jobs = [view[i:i + CHUNK_BYTES] for view in pieces for i in range(0, len(view), CHUNK_BYTES)]
    with ThreadPoolExecutor(HASH_WORKERS) as pool:
        return list(pool.map(lambda chunk: blake3(chunk).hexdigest(), jobs))


def as_format_1(path: Path) -> None:
    """Rewrite the manifest of the checkpoint at ``path`` as format 1 (size and sha256 only)."""
    import json

    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 1
    manifest["files"] = {name: {"size": e["size"], "sha256": e["sha256"]} for name, e in manifest["files"].items()}
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def library_save(state: dict[str, dict[str, Any]], folder: Path) -> None:
    """The reference: safetensors' own writer, fsync, then a separate sha256 pass."""
    from safetensors.torch import save_file

    from relaytrain.checkpoint import write_manifest

    folder.mkdir()
    for name, tensors in state.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, folder / name)
        fd = os.open(folder / name, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    write_manifest(folder, 0)


def one_round(work: Path, state: dict[str, dict[str, Any]], tensors: list[Any], size_mb: int,
              step: int, reference: bool, record: Callable[[str, float], None]) -> None:
    """Measure everything once, leaving ``work`` as it was."""
    from relaytrain.checkpoint import CheckpointManager, load_checkpoint

    out = work / "checkpoints"
    record("dd write (conv=fsync)", dd_write(work / "dd.bin", size_mb))
    manager = CheckpointManager(out)
    record("save (sync)", timed(manager.save, state, step))
    path = out / f"step_{step:08d}"
    files = sorted(path.rglob("*.safetensors"))
    evict(files)
    record("dd read, cold", dd_read(files))
    evict(files)
    record("restore, cold", timed(load_checkpoint, path))
    dd_read(files)
    record("dd read, warm", dd_read(files))
    record("restore, warm", timed(load_checkpoint, path))
    as_format_1(path)
    evict(files)
    record("dd read, cold (f1)", dd_read(files))
    evict(files)
    record("restore f1, cold", timed(load_checkpoint, path))
    shutil.rmtree(out)

    if reference:
        record("(ref) save_file + sha256", timed(library_save, state, work / "reference"))
        shutil.rmtree(work / "reference")

    record("sha256 in memory, 1 core", timed(sha256_of, tensors))
    record("blake3 chunks, all cores", timed(blake3_chunks_of, tensors))
    record("clone (memcpy)", timed(lambda: [tensor.clone() for tensor in tensors]))
    background = CheckpointManager(out, async_save=True)
    blocking = timed(background.save, state, step)
    record("async save, blocking", blocking)
    record("async save, to commit", blocking + timed(background.close))
    shutil.rmtree(out)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table and the ratios."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="state size in MiB (rounded down to 16)")
    parser.add_argument("--tensor-mb", type=int, default=64, help="size of each tensor in MiB")
    parser.add_argument("--shards", type=int, default=1, help="safetensors files the state is split into")
    parser.add_argument("--repeats", type=int, default=3, help="measured rounds; medians are reported")
    parser.add_argument("--dir", default=None, help="a folder on the disk to measure (default: the temp dir)")
    parser.add_argument("--no-reference", action="store_true", help="skip the safetensors.save_file row")
    args = parser.parse_args(argv)

    import torch

    size_mb = max(16, args.size_mb - args.size_mb % 16)
    state = build_state(size_mb, min(args.tensor_mb, size_mb), args.shards)
    tensors = [tensor for shard in state.values() for tensor in shard.values()]
    nbytes = sum(tensor.numel() * tensor.element_size() for tensor in tensors)
    try:
        import safetensors  # noqa: F401

        reference = not args.no_reference
    except ImportError:
        reference = False
    results: dict[str, list[float]] = {}
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="relay-bench-", dir=args.dir))
    try:
        dd_write(work / "warmup.bin", size_mb)
        for repeat in range(args.repeats):
            one_round(work, state, tensors, size_mb, repeat + 1, reference,
                      lambda name, seconds: results.setdefault(name, []).append(seconds))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()[0]

    median = {name: statistics.median(values) for name, values in results.items()}
    rate = {name: nbytes / seconds / 1e9 for name, seconds in median.items()}
    print(f"state: {nbytes / MB:.0f} MiB of float32 in {len(tensors)} tensors, {args.shards} file(s); "
          f"torch {torch.__version__}; {os.cpu_count()} CPUs; folder {args.dir or tempfile.gettempdir()}; "
          f"load average {load_before:.1f} -> {load_after:.1f}")
    print(f"{'measure':26} {'median s':>9} {'GB/s':>7}   rounds (s)")
    for name, values in results.items():
        rounds = " ".join(f"{value:.3f}" for value in values)
        print(f"{name:26} {median[name]:9.3f} {rate[name]:7.2f}   {rounds}")
    ratios = [
        ("save / dd write", rate["save (sync)"] / rate["dd write (conv=fsync)"], ">= 0.75"),
        ("restore / dd read, cold", rate["restore, cold"] / rate["dd read, cold"], ">= 0.80"),
        ("restore / dd read, warm", rate["restore, warm"] / rate["dd read, warm"], "(info)"),
        ("restore f1 / dd read, cold", rate["restore f1, cold"] / rate["dd read, cold (f1)"], "(info)"),
        ("async blocking / clone", median["async save, blocking"] / median["clone (memcpy)"], "<= 1.5"),
    ]
    print()
    for name, value, target in ratios:
        print(f"{name:26} {value:9.2f}   target {target}")


if __name__ == "__main__":
    main()
