"""Fixtures of the integration tests: a live cluster of a commander and real workers; an S3
endpoint (moto in server mode)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relaytrain.commander.store import Store
from tests.support.commander import Commander, wait_until
from tests.support.moto_server import MotoServer
from tests.support.relay import WorkerProc


@pytest.fixture(scope="session")
def moto():
    """One moto S3 server (its own process) for the session; tests use buckets of their own."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def s3_env(moto, monkeypatch, tmp_path) -> MotoServer:
    """Standard AWS configuration (environment only) pointing at the moto server."""
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return moto


@contextlib.contextmanager
def live_cluster(root: Path) -> Iterator[Any]:
    """A commander on SQLite under ``root`` and a way to start workers against it (or through a
    proxy); every worker and the commander are stopped on leaving."""
    commander = Commander(db=str(root / "relay.db"), token="admin", workdir=root).start()
    client = commander.client()
    token = client.create_token("workers").token
    workers: list[WorkerProc] = []

    class Cluster:
        store = root / "artifacts"

        def __init__(self) -> None:
            self.commander, self.client = commander, client

        def worker(self, name: str, url: str | None = None, *extra: str) -> WorkerProc:
            w = WorkerProc(url or commander.url, token, name, root / name, list(extra)).start()
            workers.append(w)
            return w

        def run(self, run_id: str):
            return client.run(run_id)

        def wait_status(self, run_id: str, statuses: tuple[str, ...], timeout_s: float = 90):
            return wait_until(lambda: (r := client.run(run_id)).status in statuses and r, timeout_s,
                              f"{run_id} to become {statuses} (workers: {self.logs()})")

        def wait_step(self, run_id: str, step: int, timeout_s: float = 60):
            return wait_until(lambda: (r := client.run(run_id)).step >= step and r.holder and r, timeout_s,
                              f"{run_id} to reach step {step}")

        def holder(self, run_id: str) -> WorkerProc:
            name = client.run(run_id).holder
            return next(w for w in workers if w.worker_id == name)

        def attempts(self) -> list[dict]:
            store = Store(str(root / "relay.db"))
            try:
                return store.attempts_table()
            finally:
                store.close()

        def logs(self) -> str:
            return "\n".join(f"--- {w.worker_id}\n{w.log()[-3000:]}" for w in workers)

    try:
        yield Cluster()
    finally:
        for w in workers:
            w.stop()
        client.close()
        commander.stop()


@pytest.fixture
def cluster(tmp_path):
    """A live cluster of this test's own (``live_cluster``)."""
    with live_cluster(tmp_path) as live:
        yield live


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory):
    """A live cluster that the tests of one module share (for what they only read)."""
    with live_cluster(tmp_path_factory.mktemp("cluster")) as live:
        yield live
