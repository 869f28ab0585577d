"""The rollout worker's weight pull against a real HTTP server: parallel chunks, every chunk
verified and the chunks checked to tile the file, a corrupt chunk retried then refused, a dropped
version started over, the previous pull's buffer reused."""

from __future__ import annotations

import os

import pytest

from relaytrain.rollout import manager_client
from relaytrain.rollout.manager_client import ManagerClient, ManagerError, ManagerGone, WeightsCorrupt, WeightsGone
from tests.support.weights_server import WeightsServer

DATA = os.urandom(5 * 4096 + 123)


def test_pull_in_parallel_streams_gives_the_exact_bytes():
    with WeightsServer(DATA, version=3, chunk_bytes=4096) as server, ManagerClient(server.url, server.secret) as c:
        pulled = c.pull_weights(streams=4)
    assert pulled.version == 3 and pulled.data == DATA
    assert sorted(server.requests) == sorted(f"3/{i}" for i in range(6))


def test_a_corrupt_chunk_is_retried():
    with WeightsServer(DATA, chunk_bytes=4096) as server, ManagerClient(server.url, server.secret) as c:
        server.corrupt[2] = 2
        pulled = c.pull_weights(streams=2)
    assert pulled.data == DATA
    assert server.requests.count("1/2") == 3


def test_a_chunk_that_stays_corrupt_is_refused_by_name():
    with WeightsServer(DATA, chunk_bytes=4096) as server:
        server.corrupt[4] = 100
        with ManagerClient(server.url, server.secret, chunk_retries=2) as c, \
                pytest.raises(WeightsCorrupt, match=r"weights v1 chunk 4: sha256 .* after 3 tries"):
            c.pull_weights(streams=3)
    assert server.requests.count("1/4") == 3


def test_a_version_dropped_mid_pull_starts_over_with_the_latest():
    newer = os.urandom(3 * 4096)
    with WeightsServer(DATA, version=1, chunk_bytes=4096) as server, ManagerClient(server.url, server.secret) as c:
        manifest = c.manifest()
        server.publish(newer, 2)  # v1 is gone before its chunks are asked for
        with pytest.raises(WeightsGone, match="no longer held"):
            c.pull_version(manifest)
        pulled = c.pull_weights()
    assert (pulled.version, pulled.data) == (2, newer)


def test_a_wrong_secret_sends_the_worker_back_to_the_commander():
    with WeightsServer(DATA) as server, ManagerClient(server.url, "old-secret") as c, \
            pytest.raises(ManagerGone, match="401"):
        c.pull_weights()


def test_an_unreachable_manager_is_gone():
    with WeightsServer(DATA) as server:
        url = server.url
    with ManagerClient(url, "x", timeout_s=2) as c, pytest.raises(ManagerGone, match="cannot reach"):
        c.manifest()


def test_chunks_are_hashed_slice_by_slice_as_they_land(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(manager_client, "READ_SLICE_BYTES", 1000)  # several slices per chunk, the last one short
    with WeightsServer(DATA, chunk_bytes=4096) as server, ManagerClient(server.url, server.secret) as c:
        server.corrupt[5] = 1  # the short last chunk
        pulled = c.pull_weights(streams=2)
    assert pulled.data == DATA and server.requests.count("1/5") == 2


@pytest.mark.parametrize(("change", "problem"), [
    (lambda m: m.chunks.pop(2), r"chunks\[2\] starts at 12288, expected 8192"),                 # a gap
    (lambda m: setattr(m.chunks[1], "offset", 4000), r"chunks\[1\] starts at 4000, expected 4096"),  # overlap
    (lambda m: setattr(m, "total_bytes", m.total_bytes + 1), r"chunks cover 20603 bytes, total_bytes is 20604"),
    (lambda m: m.chunks.pop(), r"chunks cover 20480 bytes, total_bytes is 20603"),                # a short tail
])
def test_a_manifest_whose_chunks_do_not_tile_the_file_is_refused_before_any_chunk(change, problem):
    with WeightsServer(DATA, chunk_bytes=4096) as server, ManagerClient(server.url, server.secret) as c:
        manifest = c.manifest()
        change(manifest)
        with pytest.raises(ManagerError, match=problem):
            c.pull_version(manifest)
    assert server.requests == []


def test_a_buffer_of_the_right_size_is_reused_and_any_other_is_not():
    spare, small = bytearray(len(DATA)), bytearray(10)
    with WeightsServer(DATA, version=4, chunk_bytes=4096) as server, ManagerClient(server.url, server.secret) as c:
        reused = c.pull_weights(streams=3, into=spare)
        fresh = c.pull_weights(streams=3, into=small)
    assert reused.data is spare and spare == DATA
    assert fresh.data is not small and fresh.data == DATA and small == bytearray(10)
