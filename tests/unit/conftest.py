"""The unit tier's rule, enforced: a unit test starts no process and opens no socket (no
``bind``, ``connect`` or ``listen``; in-process ASGI clients and socket pairs are fine). A test
that needs either belongs in tests/integration. A call that breaks the rule raises
``TierViolation`` (a BaseException, so ``except Exception`` in the code under test does not
hide it) and fails the test at teardown even if something swallowed it anyway.
"""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

RULE = "unit tests start no process and open no socket: move this test to tests/integration"


class TierViolation(BaseException):
    """A unit test tried to start a process or use the network."""


_SOCKET_CALLS = ("bind", "connect", "connect_ex", "listen")
_PROCESS_CALLS = ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system",
                  "execv", "execve", "execvp", "execvpe", "spawnv", "spawnve", "spawnvp", "spawnvpe")


@pytest.fixture(autouse=True)
def no_process_no_socket(monkeypatch):
    """Every unit test runs under the rule; the fixture's value is the list of refused calls."""
    attempts: list[str] = []

    def refuse(what: str):
        def refused(*args, **kwargs):
            shown = args[1] if what.startswith("socket.") and len(args) > 1 else (args[0] if args else "")
            attempts.append(f"{what}({shown!r})")
            raise TierViolation(f"{RULE} (it called {attempts[-1]})")

        return refused

    for name in _SOCKET_CALLS:
        monkeypatch.setattr(socket.socket, name, refuse(f"socket.{name}"))
    popen = refuse("subprocess.Popen")

    def no_popen(self, *args, **kwargs):
        self._child_created = False  # what Popen.__del__ reads of the half-made object
        popen(*args, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", no_popen)
    for name in _PROCESS_CALLS:
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse(f"os.{name}"))
    yield attempts
    if attempts:
        pytest.fail(f"{RULE}; it called: {', '.join(attempts)}", pytrace=False)
