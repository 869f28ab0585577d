"""The trainer under supervision: its whole process tree started inside a fence
(:mod:`relaytrain.worker.fence`), dying with its worker, stopped in stages (stop file,
SIGTERM, SIGKILL) as one, and its exit classified by the contract (DESIGN §6–7)."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from relaytrain.checkpoint import atomic_write_text

from . import fence

log = logging.getLogger(__name__)

FENCE_SCRIPT = Path(fence.__file__).resolve()
FENCE_EXIT_S = 5.0
"""How long the fence may take to kill its tree and exit before the worker kills it and the
marked processes itself."""


class TrainerProcess:
    """One trainer process tree under supervision. ``pid`` is the fence's: it lives exactly as
    long as the tree, and exits the way the trainer did."""

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_dir: Path,
                 stop_file: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / "stdout.log"
        self.stderr_path = log_dir / "stderr.log"
        self.stop_file = stop_file
        self.stop_file.unlink(missing_ok=True)
        self.token = secrets.token_hex(16)
        fenced = [sys.executable, "-I", "-S", str(FENCE_SCRIPT), "--parent", str(os.getpid()), "--", *argv]
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                fenced, env={**env, fence.FENCE_ENV: self.token}, cwd=cwd, stdout=out, stderr=err,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.pid = self.proc.pid
        atomic_write_text(log_dir / "trainer.pid", f"{self.pid}\n")
        self._stop_started: float | None = None
        self._termed = False
        self._killed_at: float | None = None
        self._paused_at: float | None = None
        self.stop_reason: str | None = None

    def poll(self) -> int | None:
        returncode = self.proc.poll()
        if returncode is None and self._killed_at is not None and time.monotonic() - self._killed_at > FENCE_EXIT_S:
            self._kill_fence()  # the fence is stuck: do its work from here
        return self.proc.poll()

    def request_stop(self, reason: str) -> None:
        """Begin a graceful stop: the stop file now (SIGTERM, the contract's other way to ask, if the
        file cannot be written: a full disk); :meth:`advance_stop` escalates."""
        if self._stop_started is None:
            self.stop_reason = reason
            self._stop_started = time.monotonic()
            try:
                atomic_write_text(self.stop_file, reason + "\n")
            except OSError as exc:
                log.warning("cannot write the stop file %s (%s): asking the trainer by SIGTERM", self.stop_file, exc)
                self.terminate()

    @property
    def stopping(self) -> bool:
        return self._stop_started is not None

    def advance_stop(self, grace_s: float) -> None:
        """SIGTERM the tree at half the grace period, SIGKILL it at the full grace period. Not
        while paused: a stopped tree can do nothing with the time it is given."""
        if self._stop_started is None or self._paused_at is not None or self.proc.poll() is not None:
            return
        waited = time.monotonic() - self._stop_started
        if waited >= grace_s and self._killed_at is None:
            self.kill()
        elif waited >= grace_s / 2 and not self._termed:
            self.terminate()

    def pause(self) -> None:
        """Stop every process of the tree (SIGSTOP, through the fence) until :meth:`resume`.
        Sent again on every call: a repeated pause is harmless, and it puts right a resume the
        fence happened to take after it."""
        if self._paused_at is None:
            self._paused_at = time.monotonic()
        self._signal(fence.PAUSE)

    def resume(self) -> float:
        """Continue the paused tree; returns how long it was paused (0 if it was not)."""
        if self._paused_at is None:
            return 0.0
        paused_for, self._paused_at = time.monotonic() - self._paused_at, None
        self._signal(fence.RESUME)
        return paused_for

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def terminate(self) -> None:
        """SIGTERM every process of the tree (the fence forwards it)."""
        self._termed = True
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the whole tree at once (the fence does it, then exits as killed)."""
        if self._killed_at is None:
            self._killed_at = time.monotonic()
            self._signal(fence.KILL_NOW)

    def _signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def _kill_fence(self) -> None:
        self._signal(signal.SIGKILL)
        fence.kill_marked(self.token)

    def wait(self, timeout_s: float | None = None) -> int:
        return self.proc.wait(timeout_s)

    def reap_group(self) -> None:
        """After the fence exits: kill anything of the tree that outlived it (only possible if
        the fence itself was killed from outside)."""
        fence.kill_marked(self.token)

    def stderr_tail(self, lines: int = 40, max_bytes: int = 16_384) -> str:
        try:
            with open(self.stderr_path, "rb") as handle:
                handle.seek(max(0, handle.seek(0, os.SEEK_END) - max_bytes))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
