"""File I/O that hashes on the way, so a checkpoint costs one pass over its bytes, and
verification on every core.

A file's manifest entry (format 2, see ``manifest.py``) holds its sha256 (what stores need:
Hub LFS oids, S3 metadata) and the BLAKE3 digest of every ``CHUNK_BYTES`` chunk (what a
reader verifies: chunks are independent, so one file is verified on all cores at once).

Writes (``write_buffers``, ``HashingWriter``): a ``Digester`` runs the sha256 on one helper
thread and the chunks' BLAKE3 on a pool while the caller writes the next buffer (``hashlib``,
``blake3`` and ``os.write`` all release the GIL); writeback to disk is started chunk by chunk.

Reads (``check_files``): each file is read front to back by one thread, as ``dd`` reads it
(scattered reads of one file defeat the kernel's read-ahead), into chunk buffers whose BLAKE3
runs on ``HASH_WORKERS`` threads meanwhile. Entries without chunk digests (format 1) are hashed
whole, one file per job. A verified file is then mapped, not copied, to build tensors.

Public API (inside the package): ``CHUNK_BYTES``, ``Digester``, ``write_buffers``,
``HashingWriter``, ``check_files``, ``hash_file``, ``map_handle``, ``map_files``, ``chunks``.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol, TypeVar

from blake3 import blake3

from relaytrain.checkpoint._fs import start_writeback

T = TypeVar("T")
R = TypeVar("R")


class _Writable(Protocol):
    def fileno(self) -> int: ...


CHUNK = 16 << 20
"""Bytes per I/O call."""

_PIPE_MIN = 1 << 20
"""Buffers smaller than this are hashed inline: a thread hop would cost more than it saves."""


CHUNK_BYTES = 16 << 20
"""Bytes per BLAKE3 chunk of a format-2 manifest entry (its ``chunk_bytes``)."""

HASH_WORKERS = max(2, min(32, 2 * (os.cpu_count() or 1)))
"""Threads that hash chunks at once (saving and verifying): two per core."""

READ_BUFFERS = max(4, min(16, 2 * (os.cpu_count() or 1)))
"""Chunk buffers a verifying read may fill ahead of the hashing (16 MiB each)."""

_BACKLOG = 4 * CHUNK_BYTES
"""Copied bytes a ``Digester(stable=False)`` lets wait for hashing before ``update`` blocks."""


def _blake3_hex(pieces: Sequence[memoryview | bytes]) -> str:
    digest = blake3()
    for piece in pieces:
        digest.update(piece)
    return digest.hexdigest()


class Digester:
    """The manifest entry of a stream of buffers: size, sha256 of all of them (in order, on
    one helper thread) and BLAKE3 of every ``chunk_bytes`` chunk (on up to ``HASH_WORKERS``
    threads). Small streams are hashed inline.

    ``stable``: the caller keeps every buffer unchanged until ``entry()`` returns (tensor
    memory); otherwise each buffer is copied before ``update`` returns, with at most
    ``_BACKLOG`` bytes waiting (``torch.save`` reuses its buffers).
    """

    def __init__(self, *, stable: bool, chunk_bytes: int = CHUNK_BYTES) -> None:
        self._stable = stable
        self._chunk_bytes = chunk_bytes
        self._sha = hashlib.sha256()
        self._serial: ThreadPoolExecutor | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[Any]] = []
        self._backlog: list[tuple[Future[Any], int]] = []
        self._pieces: list[memoryview | bytes] = []
        self._fill = 0
        self._digests: list[Future[str] | str] = []
        self.size = 0

    def update(self, buf: memoryview | bytes) -> None:
        view = memoryview(buf).cast("B")
        if not view:
            return
        if self._serial is None and len(view) >= _PIPE_MIN:
            self._serial = ThreadPoolExecutor(1, thread_name_prefix="relay-sha256")
            self._pool = ThreadPoolExecutor(HASH_WORKERS, thread_name_prefix="relay-blake3")
        data: memoryview | bytes = view
        if not self._stable and self._serial is not None:
            data = bytes(view)  # ours now: hashed later on the helper threads
            self._throttle(len(data))
        self.size += len(data)
        if self._serial is None:
            self._sha.update(data)
        else:
            future = self._serial.submit(self._sha.update, data)
            self._pending.append(future)
            if not self._stable:
                self._backlog.append((future, len(data)))
        piece = memoryview(data)
        while piece:
            take = min(len(piece), self._chunk_bytes - self._fill)
            self._pieces.append(piece[:take] if self._pool is not None or self._stable else bytes(piece[:take]))
            self._fill += take
            piece = piece[take:]
            if self._fill == self._chunk_bytes:
                self._end_chunk()

    def _throttle(self, incoming: int) -> None:
        """Wait until the copies waiting to be hashed leave room for ``incoming`` more bytes."""
        self._backlog = [(future, size) for future, size in self._backlog if not future.done()]
        while self._backlog and sum(size for _future, size in self._backlog) + incoming > _BACKLOG:
            self._backlog.pop(0)[0].result()

    def _end_chunk(self) -> None:
        pieces, self._pieces, self._fill = self._pieces, [], 0
        if self._pool is None:
            self._digests.append(_blake3_hex(pieces))
        else:
            future = self._pool.submit(_blake3_hex, pieces)
            self._digests.append(future)
            if not self._stable:
                self._backlog.append((future, sum(len(piece) for piece in pieces)))

    def entry(self) -> dict[str, Any]:
        """``{"size", "sha256", "chunk_bytes", "blake3": [chunk digests]}`` of everything
        given to ``update`` (an empty stream has no chunks)."""
        if self._fill:
            self._end_chunk()
        for future in self._pending:
            future.result()
        digests = [item if isinstance(item, str) else item.result() for item in self._digests]
        return {"size": self.size, "sha256": self._sha.hexdigest(), "chunk_bytes": self._chunk_bytes,
                "blake3": digests}

    def close(self) -> None:
        """Wait for the jobs in flight (ignoring their results) and stop the helper threads."""
        for pool in (self._serial, self._pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._serial = self._pool = None

    def __enter__(self) -> Digester:
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


def write_buffers(path: Path, buffers: Iterable[memoryview | bytes]) -> dict[str, Any]:
    """Write ``buffers`` back to back into the new file ``path`` (which must not exist),
    hashing them on the way (``Digester``), and fsync it. Returns the file's manifest entry.

    The buffers must stay unchanged until this returns (they are hashed on helper threads
    while later ones are written). Writeback to disk is started chunk by chunk, so the final
    fsync waits for little.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        with Digester(stable=True) as digester:
            offset = 0
            for buf in buffers:
                for chunk in chunks(memoryview(buf).cast("B")):
                    digester.update(chunk)
                    _write_all(fd, chunk)
                    start_writeback(fd, offset, len(chunk))
                    offset += len(chunk)
            entry = digester.entry()
        os.fsync(fd)
    finally:
        os.close(fd)
    return entry


def hash_stream(handle: BinaryIO) -> tuple[int, str]:
    """``(size, sha256 hex)`` of what is left to read in ``handle`` (unbuffered), reading the
    next chunk while the previous one is hashed, so disk and hash overlap (format-1 entries)."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
    digest = hashlib.sha256()
    size = 0
    buffers = (memoryview(bytearray(CHUNK)), memoryview(bytearray(CHUNK)))
    with ThreadPoolExecutor(1, thread_name_prefix="relay-sha256") as helper:
        pending: Future[None] | None = None
        turn = 0
        while True:
            # The other buffer may still be hashing; this one was released by the last wait.
            view = buffers[turn]
            count = handle.readinto(view)
            if pending is not None:
                pending.result()
            if not count:
                break
            pending = helper.submit(digest.update, view[:count])
            size += count
            turn ^= 1
    return size, digest.hexdigest()


def hash_file(path: Path) -> tuple[int, str]:
    """``(size, sha256 hex)`` of the file at ``path``."""
    with open(path, "rb", buffering=0) as handle:
        return hash_stream(handle)


def file_entry(path: Path) -> dict[str, Any]:
    """The manifest entry (format 2) of the file at ``path``, read once."""
    with open(path, "rb", buffering=0) as handle, Digester(stable=False) as digester:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while data := handle.read(CHUNK):
            digester.update(data)
        return digester.entry()


def _read_exactly(fd: int, view: memoryview, offset: int) -> bool:
    """Fill ``view`` from ``fd`` at ``offset``; False if the file ends first (it shrank under us)."""
    done = 0
    while done < len(view):
        count = os.preadv(fd, [view[done:]], offset + done)
        if not count:
            return False
        done += count
    return True


def _check_whole(fd: int, expected: str) -> bool:
    """Whether the whole of ``fd`` (closed here) has sha256 ``expected``."""
    with open(fd, "rb", buffering=0) as handle:
        handle.seek(0)
        return hash_stream(handle)[1] == expected


def check_files(root: Path, files: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Read and hash every file of ``files`` (manifest entries, format 1 or 2) under ``root``;
    return the first problem in name order, e.g. ``"model.safetensors: blake3 mismatch in
    bytes 16777216-33554432"``, or None when all match. Only entries that pass their size check
    are hashed.

    Format 2: this thread reads each file front to back, as ``dd`` does (scattered reads of one
    file defeat the kernel's read-ahead), into ``READ_BUFFERS`` chunk buffers, and the chunks'
    BLAKE3 runs on ``HASH_WORKERS`` threads meanwhile. Format 1 entries are hashed whole, one
    file a job on the same pool."""
    names = sorted(files)
    problems: dict[str, str] = {}
    jobs: list[tuple[str, str, Future[bool]]] = []
    largest = max((int(entry.get("chunk_bytes") or 0) for entry in files.values()), default=0)
    free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
    for _ in range(READ_BUFFERS if largest else 0):
        free.put(memoryview(bytearray(largest)))

    def check(buf: memoryview, length: int, expected: str) -> bool:
        try:
            return blake3(buf[:length]).hexdigest() == expected
        finally:
            free.put(buf)

    with ThreadPoolExecutor(HASH_WORKERS, thread_name_prefix="relay-verify") as pool:
        for name in names:
            entry = files[name]
            try:
                fd = os.open(root / name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as exc:
                problems[name] = f"{name}: unreadable ({exc.strerror or exc})"
                continue
            try:
                size = os.fstat(fd).st_size
                if size != entry["size"]:
                    problems[name] = f"{name}: size {size} != {entry['size']}"
                    continue
                if "blake3" not in entry:
                    whole = pool.submit(_check_whole, os.dup(fd), entry["sha256"])
                    jobs.append((name, "sha256 mismatch", whole))
                    continue
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                step = entry["chunk_bytes"]
                for index, digest in enumerate(entry["blake3"]):
                    start, stop = index * step, min(size, (index + 1) * step)
                    buf = free.get()
                    try:
                        complete = _read_exactly(fd, buf[:stop - start], start)
                    except OSError as exc:
                        free.put(buf)
                        problems[name] = f"{name}: unreadable ({exc.strerror or exc})"
                        break
                    if not complete:
                        free.put(buf)
                        problems[name] = f"{name}: blake3 mismatch in bytes {start}-{stop}"
                        break
                    jobs.append((name, f"blake3 mismatch in bytes {start}-{stop}",
                                 pool.submit(check, buf, stop - start, digest)))
            finally:
                os.close(fd)
        for name, problem, future in jobs:
            try:
                ok = future.result()
            except OSError as exc:
                ok, problem = False, f"unreadable ({exc.strerror or exc})"
            if not ok and name not in problems:
                problems[name] = f"{name}: {problem}"
    return problems[min(problems)] if problems else None


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

    The caller may reuse its buffer as soon as ``write`` returns: large writes are copied and
    hashed on helper threads (``Digester(stable=False)``). Call ``close`` when done.
    """

    def __init__(self, handle: _Writable) -> None:
        self._handle = handle
        self._digester = Digester(stable=False)
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        self._digester.update(view)
        self.size += len(view)
        _write_all(self._handle.fileno(), view)
        return len(view)

    def flush(self) -> None:
        """Nothing is buffered: writes go straight to the descriptor."""

    def entry(self) -> dict[str, Any]:
        """The manifest entry of everything written."""
        return self._digester.entry()

    def close(self) -> None:
        """Stop the helper threads (after ``entry``, or on failure)."""
        self._digester.close()


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
