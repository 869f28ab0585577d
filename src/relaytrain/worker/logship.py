"""Central logs, the worker's half: the trainer's stdout and stderr shipped to the commander in
bounded chunks, per attempt, fenced by the epoch (the commander's half, and what ``seq`` means:
:mod:`relaytrain.commander.store.logs`).

Shipping never slows training:

- the trainer writes its output to files (``<run_root>/logs/attempt_<epoch>/``), never to a pipe
  of ours, so nothing it writes waits on the worker;
- one background thread reads what is new every ``interval_s`` into a queue of chunks bounded
  in bytes (:data:`QUEUE_BYTES`, or the run's ``logs.max_bytes`` when smaller), and sends it;
- when the commander is slow or down a send gives up after :data:`SEND_TIMEOUT_S`, the thread
  backs off, and the queue keeps the newest output: the oldest chunks are dropped and their bytes
  counted (a gap in the offsets, which the commander reports as ``dropped``).

A refused send (409, 404) means the lease is gone: the attempt is stopped as lost, as for
refused progress. A thread that dies stops the attempt (STYLE 12, :class:`~.guard.Guarded`).
"""

from __future__ import annotations

import codecs
import collections
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from relaytrain.api import models as m
from relaytrain.api.client import RelayClient
from relaytrain.api.status import LogStream
from relaytrain.errors import LeaseLost, NotFound, PayloadTooLarge, RelayError, RequestInvalid

from .guard import Guarded, StopFn, StopReason

log = logging.getLogger(__name__)

CHUNK_BYTES = 16 << 10
"""The largest chunk read: whole lines unless one line is longer."""
BATCH_BYTES = 128 << 10
"""The most text sent at once: within the commander's 1 MiB body limit even if JSON escapes every byte."""
QUEUE_BYTES = 2 << 20
"""The most output held in memory while the commander cannot take it (the newest is kept)."""
SEND_TIMEOUT_S = 5.0
BACKOFF_S = (1.0, 10.0)
"""After a failed send, wait the first, doubling up to the second, before sending again."""


class LogTail:
    """Reads what is new in the trainer's output files into chunks (``LogChunk`` fields) held in a
    queue of at most ``capacity`` bytes, dropping the oldest. ``offset`` is the next chunk's
    ``seq``: the bytes read so far, both streams together, whether queued, sent or dropped."""

    def __init__(self, files: dict[LogStream, Path], *, capacity: int, chunk_bytes: int = CHUNK_BYTES,
                 clock: Callable[[], float] = time.time) -> None:
        if capacity < 1 or chunk_bytes < 4:
            raise ValueError(f"capacity ({capacity}) must be ≥ 1 and chunk_bytes ({chunk_bytes}) ≥ 4")
        self.capacity = capacity
        self.chunk_bytes = chunk_bytes
        self.clock = clock
        self.queue: collections.deque[dict] = collections.deque()
        self.queued_bytes = 0
        self.offset = 0
        self.dropped = 0
        self._files = {stream: _TailedFile(path) for stream, path in files.items()}

    def read(self, *, final: bool = False) -> None:
        """Queue what the files gained since the last read (with ``final``, a last partial line too)."""
        for stream, tailed in self._files.items():
            skipped, pieces = tailed.read_new(self.capacity, self.chunk_bytes, final=final)
            self._skip(skipped)
            for text in pieces:
                self._push(stream, text)

    def batch(self, max_bytes: int = BATCH_BYTES) -> list[dict]:
        """The oldest queued chunks, up to ``max_bytes`` of text (at least one); not removed."""
        out, size = [], 0
        for chunk in self.queue:
            size += chunk["bytes"]
            if out and size > max_bytes:
                break
            out.append(chunk)
        return out

    def sent(self, n: int) -> None:
        """The oldest ``n`` queued chunks reached the commander."""
        for _ in range(n):
            self.queued_bytes -= self.queue.popleft()["bytes"]

    def discard(self, n: int) -> None:
        """The oldest ``n`` queued chunks will never be sent: counted as dropped."""
        for _ in range(n):
            chunk = self.queue.popleft()
            self.queued_bytes -= chunk["bytes"]
            self.dropped += chunk["bytes"]

    def _skip(self, size: int) -> None:
        self.offset += size
        self.dropped += size

    def _push(self, stream: LogStream, text: str) -> None:
        size = len(text.encode())
        self.queue.append({"seq": self.offset, "stream": stream, "ts": self.clock(), "text": text, "bytes": size})
        self.offset += size
        self.queued_bytes += size
        while self.queued_bytes > self.capacity:
            self.discard(1)


class _TailedFile:
    """One output file, read from where the last read stopped, a complete line at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.position = 0
        self.partial = b""
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def read_new(self, capacity: int, chunk_bytes: int, *, final: bool) -> tuple[int, list[str]]:
        """(bytes skipped, texts of the new chunks). More than ``capacity`` new bytes: only the
        newest ``capacity`` are read; the rest (and a partial line before them) is skipped."""
        try:
            with open(self.path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                skipped = 0
                if size - self.position > capacity:
                    skipped = size - capacity - self.position + len(self.partial)
                    self.position, self.partial = size - capacity, b""
                    self.decoder.reset()
                handle.seek(self.position)
                data = handle.read(size - self.position)
        except FileNotFoundError:
            return 0, []
        self.position += len(data)
        data, self.partial = self.partial + data, b""
        cut = len(data) if final else data.rfind(b"\n") + 1
        if len(data) - cut >= chunk_bytes:  # a line longer than a chunk: ship what is there
            cut = len(data)
        data, self.partial = data[:cut], data[cut:]
        texts = []
        while data:
            end = len(data) if len(data) <= chunk_bytes else data.rfind(b"\n", 0, chunk_bytes) + 1 or chunk_bytes
            text = self.decoder.decode(data[:end], final=final and end == len(data))
            if text:
                texts.append(text)
            data = data[end:]
        return skipped, texts


class LogShipper(Guarded):
    """Ships the trainer's output of one attempt on a background thread (see the module's doc)."""

    what = "log shipper"

    def __init__(self, client: RelayClient, tail: LogTail, run_id: str, worker_id: str, epoch: int,
                 on_stop: StopFn, *, interval_s: float = 0.5) -> None:
        super().__init__("logs", client, run_id, worker_id, epoch, on_stop)
        self.tail = tail
        self.interval_s = interval_s
        self._backoff = 0.0
        self._retry_at = 0.0
        self._refused = False

    @classmethod
    def for_trainer(cls, client: RelayClient, stdout: Path, stderr: Path, run_id: str, worker_id: str, epoch: int,
                    on_stop: StopFn, *, max_bytes: int, interval_s: float = 0.5) -> LogShipper:
        """Ship ``stdout`` and ``stderr`` (the trainer's files), holding at most ``max_bytes`` (the
        run's ``logs.max_bytes``, ≥ 1) or :data:`QUEUE_BYTES` in memory."""
        capacity = min(QUEUE_BYTES, max_bytes)
        tail = LogTail({LogStream.STDOUT: stdout, LogStream.STDERR: stderr}, capacity=capacity,
                       chunk_bytes=max(4, min(CHUNK_BYTES, capacity)))
        return cls(client, tail, run_id, worker_id, epoch, on_stop, interval_s=interval_s)

    def finish(self, timeout_s: float = 2 * SEND_TIMEOUT_S) -> None:
        """The trainer has exited: stop the thread, read the rest, send what can be sent in ``timeout_s``."""
        self._halt.set()
        self._thread.join()  # a send in flight ends within SEND_TIMEOUT_S
        self.tail.read(final=True)
        self._send(deadline=time.monotonic() + timeout_s)
        if self.tail.queue or self.tail.dropped:
            log.warning("log of %s epoch %d: %d bytes dropped, %d not shipped (the trainer wrote faster than "
                        "the commander took them)", self.run_id, self.epoch, self.tail.dropped, self.tail.queued_bytes)

    def _run(self) -> None:
        while not self._halt.wait(self.interval_s):
            self.tail.read()
            if time.monotonic() >= self._retry_at:
                self._send()

    def _send(self, deadline: float | None = None) -> None:
        """Send queued batches until the queue is empty, a send fails, or ``deadline`` passes."""
        while self.tail.queue and not self._refused and (deadline is None or time.monotonic() < deadline):
            batch = self.tail.batch()
            chunks = [m.LogChunk(**{k: c[k] for k in ("seq", "stream", "ts", "text")}) for c in batch]
            req = m.LogAppend(worker_id=self.worker_id, epoch=self.epoch, chunks=chunks)
            try:
                self.client.append_logs(self.run_id, req, timeout_s=SEND_TIMEOUT_S, retries=0)
            except (LeaseLost, NotFound) as exc:
                self._refused = True
                self.on_stop(StopReason.LOST, f"log refused: {exc}")
                return
            except (PayloadTooLarge, RequestInvalid) as exc:  # this batch can never be taken: count it dropped
                log.warning("log of %s: %d chunks refused (%s); dropped", self.run_id, len(batch), exc)
                self.tail.discard(len(batch))
                continue
            except RelayError as exc:
                if not self._backoff:
                    log.warning("log of %s not delivered (%s); holding the newest %d bytes and retrying",
                                self.run_id, exc, self.tail.capacity)
                self._backoff = min(BACKOFF_S[1], self._backoff * 2 or BACKOFF_S[0])
                self._retry_at = time.monotonic() + self._backoff
                return
            if self._backoff:
                log.info("log of %s delivered again (%d bytes dropped meanwhile)", self.run_id, self.tail.dropped)
                self._backoff = 0.0
            self.tail.sent(len(batch))
