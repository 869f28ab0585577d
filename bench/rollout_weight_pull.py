"""Weight pull: a rollout worker's pull of a ~500 MB safetensors state ÷ a raw TCP transfer of the
same bytes on loopback, in the same run (issue 10's target: ≥ 0.6).

    python -m bench.rollout_weight_pull                         # 500 MB, 4 streams, 3 repeats
    python -m bench.rollout_weight_pull --mb 100 --streams 1 2 4 8 --repeats 2
    python -m bench.rollout_weight_pull --server stdlib         # the stand-in server of the tests

What is timed
-------------
raw TCP
    One socket on 127.0.0.1: the server ``sendall``s the bytes, the client ``recv_into``s them
    into a preallocated buffer; from ``connect`` to the last byte. No framing, no hashing: the
    ceiling of what loopback does in Python.
pull
    ``ManagerClient.pull_weights(streams=N)`` as ``relay rollout-worker`` calls it: the manifest,
    every chunk over N connections (one per thread), each chunk's sha256 and the whole file's
    checked, the bytes handed back. Decoding (``safetensors.torch.load``) is timed apart, as
    ``decode``: it is the same whatever the transport.

Servers (``--server``)
----------------------
manager
    The real ``RolloutManager`` (FastAPI on uvicorn, in a thread of this process) publishing the
    state in its own chunks (``CHUNK_BYTES``). Default.
stdlib
    ``tests.support.weights_server.WeightsServer``: the same paths, a ``ThreadingHTTPServer``.

The state is float32 random tensors shaped like a transformer's (``--mb`` MB in all).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from relaytrain.rollout.manager_client import ManagerClient


def make_state(mb: int) -> bytes:
    """A safetensors file of about ``mb`` MB: 1024-wide float32 matrices of 4 MB each, random."""
    import torch
    from safetensors.torch import save

    generator = torch.Generator().manual_seed(0)
    count = max(1, mb // 4)
    tensors = {f"layers.{i}.weight": torch.randn(1024, 1024, generator=generator) for i in range(count)}
    return save(tensors)


def raw_tcp_seconds(data: bytes) -> float:
    """Seconds to move ``data`` over one loopback TCP connection (sendall → recv_into)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def send() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(data)

    sender = threading.Thread(target=send)
    sender.start()
    buffer = bytearray(len(data))
    view = memoryview(buffer)
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        got = 0
        while got < len(data):
            n = sock.recv_into(view[got:])
            if n == 0:
                raise RuntimeError("connection closed early")
            got += n
    seconds = time.perf_counter() - started
    sender.join()
    listener.close()
    assert bytes(buffer[:64]) == data[:64]
    return seconds


@contextmanager
def stdlib_server(data: bytes, chunk_bytes: int) -> Iterator[tuple[str, str]]:
    from tests.support.weights_server import WeightsServer

    with WeightsServer(data, version=1, chunk_bytes=chunk_bytes) as server:
        yield server.url, server.secret


@contextmanager
def manager_server(data: bytes, chunk_bytes: int) -> Iterator[tuple[str, str]]:
    """The real ``RolloutManager`` (uvicorn in a thread of this process), its default chunk size."""
    from relaytrain.rollout.manager import RolloutManager
    from relaytrain.rollout.protocol import ManagerInfo, ModelSpec, SamplingSettings
    from relaytrain.rollout.queue import GroupBook

    sampling = SamplingSettings(num_generations=1, max_new_tokens=1, temperature=1.0, top_p=1.0, seed=0,
                                eos_token_id=0, pad_token_id=0, vocab_size=2)
    info = ManagerInfo(run_id="bench", epoch=1, max_staleness=1, lease_s=60, heartbeat_s=2, sampling=sampling,
                       model=ModelSpec(config={"model_type": "llama"}), groups_total=0)
    manager = RolloutManager(GroupBook(0, max_staleness=1, lease_s=60), info=info, prompt_ids=lambda g: [0],
                             score=lambda g, t: ([], {}))
    manager.publish_weights(1, data)
    manager.start(host="127.0.0.1", port=0, advertise="127.0.0.1")
    try:
        yield str(manager.url), manager.secret
    finally:
        manager.stop()


SERVERS: dict[str, Callable[[bytes, int], AbstractContextManager[tuple[str, str]]]] = {
    "manager": manager_server,
    "stdlib": stdlib_server,
}


def pull_seconds(url: str, secret: str, streams: int) -> tuple[float, Any]:
    with ManagerClient(url, secret) as client:
        started = time.perf_counter()
        pulled = client.pull_weights(streams=streams)
        return time.perf_counter() - started, pulled


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=500, help="Size of the state, MB.")
    parser.add_argument("--streams", type=int, nargs="+", default=[4], help="Parallel streams to try.")
    parser.add_argument("--chunk-mb", type=int, default=8, help="Chunk size of the stdlib server, MB.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--server", choices=sorted(SERVERS), default="manager")
    args = parser.parse_args(argv)

    from relaytrain.rollout.engine import load_tensors

    data = make_state(args.mb)
    size_mb = len(data) / 1e6
    print(f"state: {size_mb:.0f} MB safetensors; server: {args.server}; repeats: {args.repeats}")
    rows = []
    with SERVERS[args.server](data, args.chunk_mb << 20) as (url, secret):
        for streams in args.streams:
            raw, pull = [], []
            for _ in range(args.repeats):  # alternate, so both see the same machine
                raw.append(raw_tcp_seconds(data))
                seconds, pulled = pull_seconds(url, secret, streams)
                assert pulled.data == data
                pull.append(seconds)
            started = time.perf_counter()
            load_tensors(pulled.data)
            decode = time.perf_counter() - started
            raw_s, pull_s = statistics.median(raw), statistics.median(pull)
            rows.append((streams, raw_s, pull_s, decode))
    print(f"{'streams':>7} {'raw TCP s':>10} {'raw MB/s':>9} {'pull s':>8} {'pull MB/s':>10} {'ratio':>6} "
          f"{'decode s':>9}")
    for streams, raw_s, pull_s, decode in rows:
        print(f"{streams:>7} {raw_s:>10.3f} {size_mb / raw_s:>9.0f} {pull_s:>8.3f} {size_mb / pull_s:>10.0f} "
              f"{raw_s / pull_s:>6.2f} {decode:>9.3f}")


if __name__ == "__main__":
    main()
