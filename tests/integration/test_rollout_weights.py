"""The rollout worker's weight pull against a real HTTP server: parallel chunks, every chunk and
the whole file verified, a corrupt chunk retried then refused, a dropped version started over."""

from __future__ import annotations

import os

import pytest

from relaytrain.rollout.manager_client import ManagerClient, ManagerGone, WeightsCorrupt, WeightsGone
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
