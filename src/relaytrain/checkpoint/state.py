"""Turning a trainer's state dict into checkpoint files and back, by file suffix.

| suffix         | value                          | written with                        |
|----------------|--------------------------------|-------------------------------------|
| `.safetensors` | dict[str, torch.Tensor]        | safetensors format (``tensors``)     |
| `.pt`          | any picklable object           | ``torch.save``                      |
| `.json`        | JSON-serialisable object       | ``json`` with sorted keys           |
| anything else  | bytes                          | verbatim                            |
| any            | ``fn(path)`` (sync saves only) | the callable writes the file/folder |

Bytes values are written verbatim whatever the suffix. torch is imported only when a tensor
file is written or read.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from relaytrain.checkpoint._hashio import HashingWriter, check_files, map_files, map_handle, write_buffers
from relaytrain.checkpoint.manifest import FileEntry, check_layout, check_relative_name, read_manifest
from relaytrain.checkpoint.tensors import decode, encode
from relaytrain.errors import CheckpointError

log = logging.getLogger(__name__)

_BYTES = (bytes, bytearray, memoryview)


def is_writer(value: Any) -> bool:
    """Whether a state value is a ``fn(path)`` that writes its own file (a torch module,
    though callable, is an object to save)."""
    torch = sys.modules.get("torch")
    return callable(value) and not (torch is not None and isinstance(value, torch.nn.Module))


def check_state(state: Mapping[str, Any]) -> None:
    """Raise ValueError if ``state`` is not a mapping of safe relative file names."""
    if not isinstance(state, Mapping) or not state:
        raise ValueError("state must be a non-empty dict mapping file names to values")
    for name in state:
        check_relative_name(name)


def write_state(root: Path, state: Mapping[str, Any]) -> dict[str, FileEntry]:
    """Write every entry of ``state`` under ``root``; return the manifest entries of the files
    written here (files written by callables are hashed later, at commit)."""
    check_state(state)
    for name, value in state.items():
        if is_writer(value):
            _run_writer(root, name, value)
    names = [name for name, value in state.items() if not is_writer(value)]
    entries = map_files(lambda name: _write_value(root, name, state[name]), names)
    return dict(zip(names, entries, strict=True))


def _run_writer(root: Path, name: str, fn: Callable[[Path], Any]) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fn(path)
    if not path.exists():
        raise CheckpointError(f"{name}: the callable wrote nothing at {path}")


def _write_value(root: Path, name: str, value: Any) -> FileEntry:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(value, _BYTES):
        return write_buffers(path, [memoryview(value)])
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            buffers, keep_alive = encode(value)
        except CheckpointError as exc:
            raise CheckpointError(f"{name}: {exc}") from exc
        entry = write_buffers(path, buffers)
        del keep_alive
        return entry
    if suffix == ".pt":
        import torch

        with open(path, "xb", buffering=0) as handle:
            writer = HashingWriter(handle)
            try:
                torch.save(value, writer)
                entry = writer.entry()
            finally:
                writer.close()
            os.fsync(handle.fileno())
        return entry
    if suffix == ".json":
        try:
            data = (json.dumps(value, sort_keys=True, indent=2) + "\n").encode()
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{name}: not JSON-serialisable ({exc})") from exc
        return write_buffers(path, [data])
    raise CheckpointError(
        f"{name}: cannot store a value of type {type(value).__name__} in a '{suffix or 'suffix-less'}' file; "
        "give bytes, or a callable that writes the file")


def to_host(value: Any, _memo: dict[int, Any] | None = None, reuse: Any = None,
            _taken: set[int] | None = None) -> Any:
    """A snapshot of ``value`` that training can no longer change: tensors copied to host
    memory (``.detach().to("cpu", copy=True)``), recursively through dicts, lists and
    tuples; other objects deep-copied. A tensor reached twice is copied once.

    ``reuse``: an earlier snapshot nobody uses any more; a tensor at the same place in it
    with the same shape, dtype and strides is overwritten (``copy_``) instead of a new one
    being allocated, which spares the page faults and zeroing of fresh memory."""
    memo = {} if _memo is None else _memo
    taken = set() if _taken is None else _taken  # reuse tensors already overwritten (an old alias)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        key = id(value)
        if key not in memo:
            source = value.detach()
            if (isinstance(reuse, torch.Tensor) and id(reuse) not in taken
                    and reuse.device.type == "cpu" and reuse.layout == source.layout == torch.strided
                    and reuse.dtype == source.dtype and reuse.shape == source.shape
                    and reuse.stride() == source.stride() and not reuse.requires_grad):
                taken.add(id(reuse))
                memo[key] = reuse.copy_(source)
            else:
                memo[key] = source.to("cpu", copy=True)
        return memo[key]
    if isinstance(value, dict):
        out = copy.copy(value)
        for key, item in value.items():
            out[key] = to_host(item, memo, reuse.get(key) if isinstance(reuse, dict) else None, taken)
        return out
    if isinstance(value, (list, tuple)):
        old = reuse if isinstance(reuse, (list, tuple)) and len(reuse) == len(value) else [None] * len(value)
        items = [to_host(item, memo, prev, taken) for item, prev in zip(value, old, strict=True)]
        if isinstance(value, list):
            return items
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, (str, int, float, bool, type(None), bytes)):
        return value
    return copy.deepcopy(value)


def load_checkpoint(path: str | os.PathLike[str],
                    verify_only: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """Verify the checkpoint at ``path`` and load every file back by suffix:
    ``{relative name: value}`` (``.safetensors`` -> dict of CPU tensors, ``.pt`` -> the
    object, ``.json`` -> the object, anything else -> bytes).

    Every file is verified before any is parsed (format 2: every chunk's BLAKE3, all chunks
    of all files on all cores, each read once; format 1: each file's sha256); nothing is
    returned unless every file matches the manifest (CheckpointError naming the file
    otherwise). Tensors are copy-on-write views of the memory-mapped file, as with
    ``safetensors.torch.load_file`` and ``torch.load(mmap=True)``: nothing is copied, writing
    to them never changes the file, and they stay valid after the checkpoint is deleted.

    ``verify_only(name)`` true: the file is verified like the others but not loaded; its value
    is its ``Path`` (shards another reader loads, such as ``torch.distributed.checkpoint``'s).
    """
    root = Path(path)
    try:
        manifest = read_manifest(root)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {root} is invalid: {exc}") from exc
    problem = check_layout(root, manifest) or check_files(root, manifest["files"])
    if problem is not None:
        raise CheckpointError(f"checkpoint {root} is invalid: {problem}")
    names = sorted(manifest["files"])
    values = map_files(lambda name: root / name if verify_only is not None and verify_only(name)
                       else _read_value(root, name, manifest["files"][name]), names)
    return dict(zip(names, values, strict=True))


def _read_value(root: Path, name: str, entry: Mapping[str, Any]) -> Any:
    """The value of the verified file ``name``; its size is checked once more, so a file
    replaced since verification (another size) is refused rather than parsed."""
    path = root / name
    suffix = path.suffix.lower()
    with open(path, "rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size != entry["size"]:
            raise CheckpointError(f"checkpoint {root} is invalid: {name}: size {size} != {entry['size']}")
        if suffix == ".safetensors":
            data: Any = map_handle(handle)
        elif suffix == ".pt":
            data = None
        else:
            data = handle.readall()
    try:
        if suffix == ".safetensors":
            return decode(data, name)
        if suffix == ".pt":
            return _torch_load(path)
        return json.loads(data) if suffix == ".json" else data
    except Exception as exc:
        raise CheckpointError(f"checkpoint {root}: {name}: intact but unreadable ({exc})") from exc


def _torch_load(path: Path) -> Any:
    """``torch.load`` of a verified file, memory-mapped (tensors are views of the file)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        # Not only tensors and containers (e.g. NumPy RNG state): the bytes match the manifest,
        # so unpickling them is as safe as the checkpoint itself.
        log.debug("%s needs full unpickling", path)
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
