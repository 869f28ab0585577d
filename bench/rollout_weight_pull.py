"""Weight pull: a rollout worker's pull of a ~500 MB safetensors state ÷ a raw TCP transfer of the
same bytes on loopback, in the same run (issue 10's target: ≥ 0.6), with the server in its own process.

    python -m bench.rollout_weight_pull                         # 500 MB, 4 streams, 3 repeats
    python -m bench.rollout_weight_pull --mb 100 --streams 1 2 4 8 --repeats 2
    python -m bench.rollout_weight_pull --server stdlib         # the stand-in server of the tests
    python -m bench.rollout_weight_pull --chunk-mb 32           # the server's chunk size (default: its own)

The server runs in a process of its own, as the manager runs in the trainer's process on another
machine: it builds the state, publishes it, and also answers the raw TCP baseline. The client (the
rollout worker's side) runs in this process. Each repeat times, in this order, so that all four see
the same machine: raw TCP into a fresh buffer, the first pull (fresh buffer), raw TCP into a reused
buffer, the steady pull (into the buffer of a previous pull, as a worker that pulls every version
does). The ratios are raw ÷ pull, like for like: first with fresh, steady with reused.

What is timed
-------------
raw TCP
    One socket on 127.0.0.1: the server process ``sendall``s the bytes, this process ``recv_into``s
    them; from ``connect`` to the last byte. No framing, no hashing: the ceiling of what loopback
    does in Python.
pull
    ``ManagerClient.pull_weights(streams=N)`` as ``relay rollout-worker`` calls it: the manifest,
    every chunk over N connections (one per thread), each chunk hashed as it lands and checked, the
    bytes handed back. Decoding (``engine.load_tensors``) is timed apart, as ``decode``.

What bounds it, measured in the same run (in this process, after the transfers): ``sha256 1 core``
(one pass over the state on one core: the verification's CPU), ``fresh fill`` and ``reused fill``
(copying the state into a fresh and into a reused buffer: the page faults a fresh buffer costs).

Servers (``--server``)
----------------------
manager
    The real ``RolloutManager`` (FastAPI on uvicorn) publishing the state in its chunks
    (``CHUNK_BYTES`` unless ``--chunk-mb``). Default.
stdlib
    ``tests.support.weights_server.WeightsServer``: the same paths, a ``ThreadingHTTPServer``.

The state is float32 random tensors shaped like a transformer's (``--mb`` MB in all).
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from relaytrain.rollout.manager_client import ManagerClient, PulledWeights


def make_state(mb: int) -> bytes:
    """A safetensors file of about ``mb`` MB: 1024-wide float32 matrices of 4 MB each, random."""
    import torch
    from safetensors.torch import save

    generator = torch.Generator().manual_seed(0)
    count = max(1, mb // 4)
    tensors = {f"layers.{i}.weight": torch.randn(1024, 1024, generator=generator) for i in range(count)}
    return save(tensors)


@contextmanager
def stdlib_server(data: bytes, chunk_bytes: int | None) -> Iterator[tuple[str, str]]:
    from tests.support.weights_server import WeightsServer

    with WeightsServer(data, version=1, chunk_bytes=chunk_bytes or 8 << 20) as server:
        yield server.url, server.secret


@contextmanager
def manager_server(data: bytes, chunk_bytes: int | None) -> Iterator[tuple[str, str]]:
    """The real ``RolloutManager`` (uvicorn in a thread of the server process)."""
    from relaytrain.rollout.manager import RolloutManager
    from relaytrain.rollout.protocol import ManagerInfo, ModelSpec, SamplingSettings
    from relaytrain.rollout.queue import GroupBook

    sampling = SamplingSettings(num_generations=1, max_new_tokens=1, temperature=1.0, top_p=1.0, seed=0,
                                eos_token_id=0, pad_token_id=0, vocab_size=2)
    info = ManagerInfo(run_id="bench", epoch=1, max_staleness=1, lease_s=60, heartbeat_s=2, sampling=sampling,
                       model=ModelSpec(config={"model_type": "llama"}), groups_total=0)
    manager = RolloutManager(GroupBook(0, max_staleness=1, lease_s=60), info=info, prompt_ids=lambda g: [0],
                             score=lambda g, t: ([], {}))
    if chunk_bytes:
        manager.weights.chunk_bytes = chunk_bytes
    manager.publish_weights(1, data)
    manager.start(host="127.0.0.1", port=0, advertise="127.0.0.1")
    try:
        yield str(manager.url), manager.secret
    finally:
        manager.stop()


SERVERS: dict[str, Callable[[bytes, int | None], AbstractContextManager[tuple[str, str]]]] = {
    "manager": manager_server,
    "stdlib": stdlib_server,
}


@dataclass(frozen=True)
class Served:
    url: str
    secret: str
    raw_port: int
    size: int
    sha256: str
    chunks: int


def serve(server: str, mb: int, chunk_bytes: int | None, pipe: Connection) -> None:
    """The server process: the state, the weights server and the raw TCP sender, until told to stop."""
    data = make_state(mb)
    listener = socket.create_server(("127.0.0.1", 0))

    def send_forever() -> None:
        while True:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(data)

    threading.Thread(target=send_forever, daemon=True).start()
    with SERVERS[server](data, chunk_bytes) as (url, secret), ManagerClient(url, secret) as client:
        chunks = len(client.manifest().chunks)
        pipe.send(Served(url, secret, listener.getsockname()[1], len(data), hashlib.sha256(data).hexdigest(), chunks))
        pipe.recv()


@contextmanager
def server_process(server: str, mb: int, chunk_bytes: int | None) -> Iterator[Served]:
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    process = ctx.Process(target=serve, args=(server, mb, chunk_bytes, theirs), daemon=True)
    process.start()
    try:
        if ours not in wait([ours, process.sentinel], timeout=300):
            raise RuntimeError(f"the server process did not come up (exit code {process.exitcode})")
        yield ours.recv()
        ours.send("stop")
        process.join(30)
    finally:
        if process.is_alive():
            process.kill()
            process.join()


def raw_tcp(served: Served, into: bytearray | None = None) -> tuple[float, bytearray]:
    """Seconds to receive the state over one loopback TCP connection (``recv_into`` ``into`` or a fresh buffer)."""
    started = time.perf_counter()
    buffer = into if into is not None else bytearray(served.size)
    view = memoryview(buffer)
    with socket.create_connection(("127.0.0.1", served.raw_port)) as sock:
        got = 0
        while got < served.size:
            n = sock.recv_into(view[got:])
            if n == 0:
                raise RuntimeError("connection closed early")
            got += n
    return time.perf_counter() - started, buffer


def pull(served: Served, streams: int, into: bytearray | None = None) -> tuple[float, PulledWeights]:
    with ManagerClient(served.url, served.secret) as client:
        started = time.perf_counter()
        pulled = client.pull_weights(streams=streams, into=into)
        return time.perf_counter() - started, pulled


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


@dataclass
class Row:
    streams: int
    raw_fresh: float
    pull_first: float
    raw_reused: float
    pull_steady: float
    decode: float


def measure(served: Served, streams: int, repeats: int) -> Row:
    from relaytrain.rollout.engine import load_tensors

    times: dict[str, list[float]] = {"raw_fresh": [], "pull_first": [], "raw_reused": [], "pull_steady": []}
    raw_buffer: bytearray | None = None
    spare: bytearray | None = None
    for _ in range(repeats):
        seconds, raw_buffer_fresh = raw_tcp(served)
        times["raw_fresh"].append(seconds)
        raw_buffer = raw_buffer or raw_buffer_fresh
        seconds, first = pull(served, streams)
        times["pull_first"].append(seconds)
        assert hashlib.sha256(first.data).hexdigest() == served.sha256
        spare = spare or first.data
        times["raw_reused"].append(raw_tcp(served, into=raw_buffer)[0])
        seconds, steady = pull(served, streams, into=spare)
        times["pull_steady"].append(seconds)
        assert steady.data is spare and hashlib.sha256(steady.data).hexdigest() == served.sha256
        del first, raw_buffer_fresh
    assert spare is not None
    load_tensors(spare)  # torch's import and first calls are not decoding
    decode = timed(lambda: load_tensors(spare))
    return Row(streams, *(statistics.median(times[k]) for k in times), decode=decode)


def bounds(size: int) -> dict[str, float]:
    """What bounds a pull on this machine: one sha256 pass on one core, and filling a fresh and a reused buffer."""
    source = os.urandom(1 << 20) * max(1, size >> 20)
    reused = bytearray(len(source))
    memoryview(reused)[:] = source

    def fresh_fill() -> None:
        memoryview(bytearray(len(source)))[:] = source

    def reused_fill() -> None:
        memoryview(reused)[:] = source

    scale = size / len(source)
    return {
        "sha256 1 core": scale * statistics.median(timed(lambda: hashlib.sha256(source).digest()) for _ in range(3)),
        "fresh fill": scale * statistics.median(timed(fresh_fill) for _ in range(3)),
        "reused fill": scale * statistics.median(timed(reused_fill) for _ in range(3)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=500, help="Size of the state, MB.")
    parser.add_argument("--streams", type=int, nargs="+", default=[4], help="Parallel streams to try.")
    parser.add_argument("--chunk-mb", type=int, default=None, help="The server's chunk size, MiB (default: its own).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--server", choices=sorted(SERVERS), default="manager")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    with server_process(args.server, args.mb, args.chunk_mb << 20 if args.chunk_mb else None) as served:
        size_mb = served.size / 1e6
        print(f"state: {size_mb:.0f} MB safetensors in {served.chunks} chunks; server: {args.server} (own process); "
              f"repeats: {args.repeats} (medians); cores: {os.cpu_count()}")
        rows = [measure(served, streams, args.repeats) for streams in args.streams]
    limits = bounds(served.size)
    print(f"{'streams':>7} {'raw fresh s':>11} {'first pull s':>12} {'ratio':>6} {'raw reused s':>12} "
          f"{'steady pull s':>13} {'ratio':>6} {'steady MB/s':>11} {'decode s':>9}")
    for r in rows:
        print(f"{r.streams:>7} {r.raw_fresh:>11.3f} {r.pull_first:>12.3f} {r.raw_fresh / r.pull_first:>6.2f} "
              f"{r.raw_reused:>12.3f} {r.pull_steady:>13.3f} {r.raw_reused / r.pull_steady:>6.2f} "
              f"{size_mb / r.pull_steady:>11.0f} {r.decode:>9.3f}")
    print("bounds, this process, same run: " + ", ".join(f"{k} {v:.3f} s" for k, v in limits.items()))
    print(f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
