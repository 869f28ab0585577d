"""A real S3 endpoint on loopback for tests and benchmarks: moto in server mode, in its own
process, started and stopped by PID.

    server = MotoServer().start()        # http://127.0.0.1:<free port>
    client = server.client()             # boto3 S3 client with the test credentials
    server.stop()

    python -m tests.support.moto_server --port 5000      # run one by hand

moto evaluates ``If-None-Match`` / ``If-Match`` on PUT correctly but without a lock, so two
simultaneous conditional writes of one key can both succeed there (AWS S3 serializes them).
This server wraps moto's WSGI app so that conditional requests run one at a time, which makes
it behave like S3 for the commit protocol under test; everything else runs concurrently.
``enforce_auth(True)`` makes moto check credentials (all keys are then unknown: every request
is refused with InvalidAccessKeyId), for bad-credential tests.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

from tests.support.commander import free_port

ACCESS_KEY = "relay-test-key"
SECRET_KEY = "relay-test-secret"
REGION = "us-east-1"

_CONDITIONAL = ("HTTP_IF_NONE_MATCH", "HTTP_IF_MATCH")


def serializing(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """WSGI middleware: requests carrying If-None-Match / If-Match run one at a time."""
    lock = threading.Lock()

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") in ("PUT", "POST") and any(h in environ for h in _CONDITIONAL):
            with lock:
                return list(app(environ, start_response))
        return app(environ, start_response)

    return wrapped


def serve(host: str, port: int) -> None:
    """Run moto's S3 (and every other service) on ``host:port`` until SIGTERM."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(host, port, serializing(app), threaded=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    server.serve_forever()


class MotoServer:
    """A moto S3 server in a child process on ``127.0.0.1`` and a free port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> MotoServer:
        """Start the server and wait until it answers."""
        env = {**os.environ, "MOTO_PORT": str(self.port), "PYTHONUNBUFFERED": "1"}
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.moto_server", "--port", str(self.port)],
            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.url} within {timeout}s")

    def stop(self) -> None:
        """Stop the server by its PID (SIGTERM, then SIGKILL)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs."""
        return self._process.pid if self._process is not None else None

    def _post(self, path: str, body: bytes = b"") -> None:
        request = urllib.request.Request(f"{self.url}{path}", data=body, method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10):
            pass

    def enforce_auth(self, on: bool) -> None:
        """Check credentials from now on (``on``), or accept any again."""
        self._post("/moto-api/reset-auth", b"0" if on else b"inf")

    def reset(self) -> None:
        """Forget every bucket and object."""
        self._post("/moto-api/reset")

    def client(self, **overrides: Any) -> Any:
        """A boto3 S3 client for this server (test credentials unless overridden)."""
        import boto3

        options = {"endpoint_url": self.url, "region_name": REGION, "aws_access_key_id": ACCESS_KEY,
                   "aws_secret_access_key": SECRET_KEY} | overrides
        return boto3.session.Session().client("s3", **options)

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and ``relay``) at this server."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL_S3": self.url}

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
