"""File I/O that computes sha256 on the way, so a checkpoint costs one pass over its bytes.

sha256 runs at about 2 GB/s on one core, the same order as a disk, so hashing after writing
would nearly double the time of a save. Writes: the hash of one chunk runs on a helper thread
while the caller writes the next (``hashlib`` and ``os.write`` both release the GIL), and
writeback to disk is started chunk by chunk. Reads: the next chunk is read while the previous
one is hashed, so verifying costs about the slower of disk and hash; a verified file is then
mapped, not copied, to build tensors.
Independent files are handled on a few threads at once (``map_files``).
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol, TypeVar

from relaytrain.checkpoint._fs import start_writeback

T = TypeVar("T")
R = TypeVar("R")


class _Writable(Protocol):
    def fileno(self) -> int: ...


CHUNK = 16 << 20
"""Bytes per I/O call and per hash job."""

_PIPE_MIN = 1 << 20
"""Buffers smaller than this are hashed inline: a thread hop would cost more than it saves."""


class HashPipe:
    """sha256 over a sequence of buffers, each hashed on a helper thread.

    ``update(buf)`` returns once the *previous* buffer is hashed, so the caller's I/O on the
    next buffer overlaps the hashing of this one. A buffer must not change until the next
    ``update`` (or ``hexdigest``) returns.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None
        self.size = 0

    def update(self, buf: memoryview | bytes) -> None:
        self._wait()
        self.size += len(buf)
        if len(buf) < _PIPE_MIN:
            self._hash.update(buf)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="relay-sha256")
        self._pending = self._pool.submit(self._hash.update, buf)

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def hexdigest(self) -> str:
        self._wait()
        return self._hash.hexdigest()

    def close(self) -> None:
        """Wait for the job in flight (ignoring its result) and stop the helper thread."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.exception()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> HashPipe:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def chunks(buf: memoryview, size: int | None = None) -> Iterator[memoryview]:
    """Slices of at most ``size`` (default ``CHUNK``) bytes of ``buf`` (no copies)."""
    size = size or CHUNK
    for start in range(0, len(buf), size):
        yield buf[start:start + size]


def _write_all(fd: int, buf: memoryview) -> None:
    done = 0
    while done < len(buf):
        done += os.write(fd, buf[done:])


def write_buffers(path: Path, buffers: Iterable[memoryview | bytes]) -> tuple[int, str]:
    """Write ``buffers`` back to back into the new file ``path`` (which must not exist),
    hashing them on the way, and fsync it. Returns ``(size, sha256 hex)``.

    Writeback to disk is started chunk by chunk, so the final fsync waits for little.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        with HashPipe() as pipe:
            offset = 0
            for buf in buffers:
                for chunk in chunks(memoryview(buf).cast("B")):
                    pipe.update(chunk)
                    _write_all(fd, chunk)
                    start_writeback(fd, offset, len(chunk))
                    offset += len(chunk)
            digest = pipe.hexdigest()
        os.fsync(fd)
    finally:
        os.close(fd)
    return offset, digest


def hash_stream(handle: BinaryIO) -> tuple[int, str]:
    """``(size, sha256 hex)`` of what is left to read in ``handle`` (unbuffered), reading the
    next chunk while the previous one is hashed, so disk and hash overlap."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
    with HashPipe() as pipe:
        buffers = (memoryview(bytearray(CHUNK)), memoryview(bytearray(CHUNK)))
        turn = 0
        while True:
            # The other buffer may still be hashing; this one was released by the last update.
            view = buffers[turn]
            count = handle.readinto(view)
            if not count:
                break
            pipe.update(view[:count])
            turn ^= 1
        return pipe.size, pipe.hexdigest()


def hash_file(path: Path) -> tuple[int, str]:
    """``(size, sha256 hex)`` of the file at ``path``."""
    with open(path, "rb", buffering=0) as handle:
        return hash_stream(handle)


def map_handle(handle: BinaryIO) -> mmap.mmap | bytearray:
    """The bytes of the open file ``handle``, mapped copy-on-write (``ACCESS_COPY``: writable,
    never written back to the file). Empty files, and files that cannot be mapped, are read
    into a ``bytearray`` instead."""
    size = os.fstat(handle.fileno()).st_size
    if size:
        try:
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError):
            pass
    handle.seek(0)
    data = bytearray(size)
    view = memoryview(data)
    done = 0
    while done < size and (count := handle.readinto(view[done:])):
        done += count
    return data[:done] if done < size else data


class HashingWriter:
    """A write-only file object that hashes what passes through it (for ``torch.save``).

    Hashing is inline here: the caller may reuse its buffer as soon as ``write`` returns.
    """

    def __init__(self, handle: _Writable) -> None:
        self._handle = handle
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        self._hash.update(view)
        self.size += len(view)
        _write_all(self._handle.fileno(), view)
        return len(view)

    def flush(self) -> None:
        """Nothing is buffered: writes go straight to the descriptor."""

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


IO_WORKERS = max(1, min(4, os.cpu_count() or 1))
"""Files read, written or hashed at once."""


def map_files(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(item) for item in items]`` on up to ``IO_WORKERS`` threads, results in order.

    The first failure (in item order) is re-raised once every job has finished, so no
    thread is still writing when the caller cleans up.
    """
    if len(items) <= 1 or IO_WORKERS == 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(min(IO_WORKERS, len(items)), thread_name_prefix="relay-io") as pool:
        futures = [pool.submit(fn, item) for item in items]
        for future in futures:
            future.exception()
    return [future.result() for future in futures]
