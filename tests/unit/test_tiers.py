"""The unit tier's rule (tests/unit/conftest.py) refuses processes and sockets, and lets
in-process clients through."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess

import pytest

from tests.unit.conftest import TierViolation


def test_processes_and_sockets_are_refused(no_process_no_socket):
    with pytest.raises(TierViolation, match="move this test to tests/integration"):
        subprocess.run(["true"])
    with pytest.raises(TierViolation):
        os.system("true")
    with socket.socket() as sock, pytest.raises(TierViolation):
        sock.bind(("127.0.0.1", 0))
    with socket.socket() as sock, pytest.raises(TierViolation):
        sock.connect(("127.0.0.1", 9))
    with pytest.raises(TierViolation):
        if os.fork() == 0:  # pragma: no cover - the child, only if the rule let the fork through
            os._exit(0)
    refused = [call.split("(")[0] for call in no_process_no_socket]
    assert refused == ["subprocess.Popen", "os.system", "socket.bind", "socket.connect", "os.fork"]
    no_process_no_socket.clear()  # refused as expected: do not fail this test at teardown


def test_an_event_loop_and_an_in_process_app_are_allowed():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()
    app.get("/ping")(lambda: {"ok": True})
    with TestClient(app) as client:
        assert client.get("/ping").json() == {"ok": True}
    assert asyncio.run(asyncio.sleep(0, result=7)) == 7
