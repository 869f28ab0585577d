"""Start and stop real commander processes, and fresh databases (SQLite or PostgreSQL) for
them: for the tests and the benchmarks (bench/commander_load)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PG_URL = os.environ.get("RELAY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.05):
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def pg_problem(url: str = PG_URL) -> str | None:
    """None if the PostgreSQL server at ``url`` answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(url.replace("+psycopg", ""), connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means "no PostgreSQL here"
        return f"{type(exc).__name__}: {exc}".strip()


def create_pg_database(base: str = PG_URL) -> str:
    """A new empty database on the server of ``base``; returns its SQLAlchemy URL."""
    import psycopg

    name = f"relay_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return base.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(url: str, base: str = PG_URL) -> None:
    """Drop the database ``url`` made by :func:`create_pg_database` (connections and all)."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(base.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def fresh_database(kind: str, folder: Path, pg_base: str = PG_URL) -> Iterator[str]:
    """A new empty database for a commander: ``sqlite``, the file ``folder``/relay.db (the
    folder is its owner's to remove), or ``postgresql``, a new database on the server of
    ``pg_base``, dropped afterwards."""
    if kind == "sqlite":
        path = folder / "relay.db"
        if path.exists():
            raise FileExistsError(f"{path} exists: a fresh database needs a folder of its own")
        yield str(path)
    elif kind == "postgresql":
        url = create_pg_database(pg_base)
        try:
            yield url
        finally:
            drop_pg_database(url, pg_base)
    else:
        raise ValueError(f"unknown database kind {kind!r} (sqlite or postgresql)")


@dataclass
class Commander:
    """A ``relay serve`` process on 127.0.0.1 (another server command: override :meth:`command`)."""

    db: str
    token: str | None
    workdir: Path
    port: int = field(default_factory=free_port)
    sweep_interval: float = 0.2
    env: dict[str, str] = field(default_factory=dict)
    """Variables added to the server's environment."""
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The server's command line."""
        return [sys.executable, "-m", "relaytrain.cli", "serve", "--db", self.db, "--port", str(self.port),
                "--sweep-interval", str(self.sweep_interval), "--log-level", "warning"]

    def start(self, timeout_s: float = 30) -> Commander:
        """Start the server and wait until ``/api/v1/health`` answers."""
        self.log_path = self.workdir / f"commander-{self.port}.log"
        env = {**os.environ, "RELAY_TOKEN": self.token or "", **self.env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        try:
            wait_until(self._healthy, timeout_s, f"commander on port {self.port} (log {self.log_path})")
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:] if self.log_path else ""
        except OSError:
            return ""

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"commander exited {self.proc.returncode}: {self.log_tail()}")
        try:
            return httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def client(self, token: str | None = None):
        from relaytrain.api.client import RelayClient

        return RelayClient(self.url, token if token is not None else self.token, retries=2)
