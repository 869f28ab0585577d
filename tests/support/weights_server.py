"""A stand-in for the rollout manager's weight endpoints (stdlib ``http.server`` in a thread):
``GET {PREFIX}/weights`` and ``GET {PREFIX}/weights/{version}/chunks/{i}``, with the Bearer
secret, for the weight-pull tests and the pluggable server of ``bench/rollout_weight_pull.py``.

``corrupt[i] = n`` flips a byte of chunk ``i`` in its next ``n`` answers; ``publish(data)``
replaces the version (the old one then answers 410)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from relaytrain.rollout.protocol import CHUNK_SHA256_HEADER, PREFIX, WeightChunk, WeightsManifest

_CHUNK = re.compile(rf"^{re.escape(PREFIX)}/weights/(\d+)/chunks/(\d+)$")


def manifest_of(version: int, data: bytes | memoryview, chunk_bytes: int) -> WeightsManifest:
    view = memoryview(data)
    chunks = [
        WeightChunk(offset=o, length=min(chunk_bytes, len(view) - o),
                    sha256=hashlib.sha256(view[o : o + chunk_bytes]).hexdigest())
        for o in range(0, len(view), chunk_bytes)
    ]
    return WeightsManifest(version=version, total_bytes=len(view), sha256=hashlib.sha256(view).hexdigest(),
                           chunks=chunks)


class WeightsServer:
    """Serves one weight version at a time on 127.0.0.1; ``url`` is the manager's base URL."""

    def __init__(self, data: bytes, *, version: int = 1, chunk_bytes: int = 1 << 20, secret: str = "s3cret") -> None:
        self.secret = secret
        self.chunk_bytes = chunk_bytes
        self.corrupt: dict[int, int] = {}
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self.publish(data, version)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def publish(self, data: bytes, version: int) -> None:
        manifest = manifest_of(version, data, self.chunk_bytes)
        with self._lock:
            self.data, self.manifest = memoryview(data), manifest

    def __enter__(self) -> WeightsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _chunk(self, version: int, index: int) -> tuple[int, bytes | memoryview, str]:
        with self._lock:
            self.requests.append(f"{version}/{index}")
            if version != self.manifest.version:
                return 410, b'{"detail": "weights version no longer held"}', ""
            if index >= len(self.manifest.chunks):
                return 404, b'{"detail": "no such chunk"}', ""
            chunk = self.manifest.chunks[index]
            body: bytes | memoryview = self.data[chunk.offset : chunk.offset + chunk.length]
            if self.corrupt.get(index, 0) > 0:
                self.corrupt[index] -= 1
                flipped = bytearray(body)
                flipped[0] ^= 0xFF
                body = bytes(flipped)
            return 200, body, chunk.sha256

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes | memoryview, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.headers.get("Authorization") != f"Bearer {server.secret}":
                    return self._send(401, b'{"detail": "wrong secret"}', {"Content-Type": "application/json"})
                if self.path == f"{PREFIX}/weights":
                    body = json.dumps(server.manifest.model_dump()).encode()
                    return self._send(200, body, {"Content-Type": "application/json"})
                match = _CHUNK.match(self.path)
                if match is None:
                    return self._send(404, b'{"detail": "not found"}', {"Content-Type": "application/json"})
                status, body, sha = server._chunk(int(match.group(1)), int(match.group(2)))
                headers = {CHUNK_SHA256_HEADER: sha} if status == 200 else {"Content-Type": "application/json"}
                return self._send(status, body, {**headers, "Content-Type": "application/octet-stream"}
                                  if status == 200 else headers)

        return Handler
