"""safetensors files, written straight from tensor memory and read back as views of the file.

The bytes are the safetensors format (8-byte little-endian header length, a JSON header padded
with spaces to a multiple of 8, then the tensors back to back, largest element size first so
every tensor is aligned), so ``safetensors.torch.load_file`` reads what is written here and
vice versa. It is written here rather than with ``safetensors.torch.save_file`` because the
manifest needs the sha256 of every file: computing it while the bytes go to disk makes a save
one pass over the data instead of two. Loading maps the verified file and builds the tensors
on the mapping, like ``safetensors.torch.load_file`` does, so nothing is copied.
Tied or otherwise shared tensors are written as independent copies, so they need no special
handling; they load back as separate tensors.

torch is imported inside the functions: this module imports without it.
"""

from __future__ import annotations

import ctypes
import json
import math
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from relaytrain.errors import CheckpointError

if TYPE_CHECKING:
    from mmap import mmap

    import torch

    Buffer = mmap | bytearray

_CODES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "U16": "uint16", "U32": "uint32", "U64": "uint64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
_MAX_HEADER = 100 << 20


def _code_of(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    for code, torch_name in _CODES.items():
        if torch_name == name:
            return code
    raise CheckpointError(f"dtype {dtype} cannot be stored in safetensors")


def _dtype_of(code: str) -> torch.dtype:
    import torch

    dtype = getattr(torch, _CODES.get(code, ""), None)
    if dtype is None:
        raise CheckpointError(f"unsupported safetensors dtype {code!r}")
    return dtype


def tensor_memory(tensor: torch.Tensor) -> memoryview:
    """A byte view of a contiguous CPU tensor's memory (no copy). The caller keeps
    ``tensor`` alive for as long as the view is used."""
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes == 0:
        return memoryview(b"")
    return memoryview((ctypes.c_ubyte * nbytes).from_address(tensor.data_ptr())).cast("B")


def encode(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
           ) -> tuple[list[memoryview | bytes], list[torch.Tensor]]:
    """The buffers that make up a safetensors file of ``tensors``, and the CPU tensors they
    point into (keep those alive until the buffers are written)."""
    import torch

    if sys.byteorder != "little":
        raise CheckpointError("safetensors files can only be written on little-endian machines")
    if not isinstance(tensors, Mapping):
        raise CheckpointError(f"expected a dict of tensors, got {type(tensors).__name__}")
    prepared: list[tuple[str, torch.Tensor]] = []
    for name, value in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise CheckpointError(f"bad tensor name {name!r}")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
        if value.layout != torch.strided:
            raise CheckpointError(f"{name}: sparse tensors cannot be stored; call .to_dense() first")
        prepared.append((name, value.detach().to("cpu").contiguous()))
    prepared.sort(key=lambda item: (-item[1].element_size(), item[0]))
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(key): str(val) for key, val in metadata.items()}
    offset = 0
    for name, tensor in prepared:
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _code_of(tensor.dtype), "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    buffers: list[memoryview | bytes] = [len(text).to_bytes(8, "little") + text]
    buffers.extend(tensor_memory(tensor) for _, tensor in prepared)
    return buffers, [tensor for _, tensor in prepared]


def decode(data: Buffer, what: str) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file whose bytes are ``data`` (an ``mmap`` opened with
    ``ACCESS_COPY``, or a ``bytearray``). The tensors share its memory, copy-on-write, and
    keep it alive; nothing is copied. ``what`` names the file in errors."""
    import torch

    size = len(data)
    if size < 8:
        raise CheckpointError(f"{what}: truncated")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > min(_MAX_HEADER, size - 8):
        raise CheckpointError(f"{what}: invalid safetensors header length {header_len}")
    try:
        header = json.loads(bytes(data[8:8 + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{what}: invalid safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{what}: invalid safetensors header")
    header.pop("__metadata__", None)
    specs = []
    for name, spec in header.items():
        try:
            dtype = _dtype_of(spec["dtype"])
            shape = [int(dim) for dim in spec["shape"]]
            begin, end = (int(pos) for pos in spec["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{what}: bad header entry for {name!r}") from exc
        specs.append((begin, end, name, dtype, shape))
    specs.sort(key=lambda spec: (spec[0], spec[1]))
    base = 8 + header_len
    position = 0
    tensors: dict[str, torch.Tensor] = {}
    for begin, end, name, dtype, shape in specs:
        count = math.prod(shape)
        if begin != position or end - begin != count * dtype.itemsize or base + end > size:
            raise CheckpointError(f"{what}: bad data offsets for tensor {name!r}")
        if count == 0:
            tensor = torch.empty(shape, dtype=dtype)
        elif (base + begin) % dtype.itemsize == 0:
            tensor = torch.frombuffer(data, dtype=dtype, count=count, offset=base + begin).view(shape)
        else:  # misaligned in a file written elsewhere: copy out
            raw = torch.frombuffer(data, dtype=torch.uint8, count=end - begin, offset=base + begin)
            tensor = raw.clone().view(dtype).view(shape)
        tensors[name] = tensor
        position = end
    if base + position != size:
        raise CheckpointError(f"{what}: {size - base - position} trailing bytes after the tensors")
    return tensors
