"""The trainer process: started in its own process group, dying with its worker, stopped in
stages (stop file, SIGTERM, SIGKILL), and its exit classified (DESIGN §6–7)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

EX_TEMPFAIL = 75
EX_CONFIG = 78
_PR_SET_PDEATHSIG = 1

TRANSIENT_PATTERNS = re.compile(
    r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|NCCL|ncclInternalError|"
    r"Connection (reset|refused)|timed? ?out|Temporary failure in name resolution|ECC error|"
    r"cudaErrorLaunchFailure|device-side assert|Bus error",
    re.IGNORECASE,
)
PERMANENT_PATTERNS = re.compile(
    r"^(ModuleNotFoundError|ImportError|SyntaxError|FileNotFoundError|IsADirectoryError|NotADirectoryError"
    r"|relaytrain\.errors\.ConfigError|ConfigError)\b",
    re.MULTILINE,
)


def _die_with_parent(parent_pid: int) -> None:
    """In the child before exec: ask the kernel to SIGKILL us when the worker dies."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the worker died before prctl took effect
        os._exit(1)


@dataclass(frozen=True)
class Exit:
    """How a trainer ended: its outcome for the commander and why."""

    outcome: str  # succeeded | stopped | failed
    failure_class: str | None
    message: str


class TrainerProcess:
    """One trainer process under supervision."""

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_dir: Path,
                 stop_file: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / "stdout.log"
        self.stderr_path = log_dir / "stderr.log"
        self.stop_file = stop_file
        self.stop_file.unlink(missing_ok=True)
        parent = os.getpid()
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                list(argv), env=dict(env), cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=lambda: _die_with_parent(parent),
            )
        self.pid = self.proc.pid
        (log_dir / "trainer.pid").write_text(f"{self.pid}\n")
        self._stop_started: float | None = None
        self._termed = False
        self._killed = False
        self.stop_reason: str | None = None

    def poll(self) -> int | None:
        return self.proc.poll()

    def request_stop(self, reason: str) -> None:
        """Begin a graceful stop: the stop file now; :meth:`advance_stop` escalates."""
        if self._stop_started is None:
            self.stop_reason = reason
            self._stop_started = time.monotonic()
            self.stop_file.parent.mkdir(parents=True, exist_ok=True)
            self.stop_file.write_text(reason + "\n")

    @property
    def stopping(self) -> bool:
        return self._stop_started is not None

    def advance_stop(self, grace_s: float) -> None:
        """SIGTERM the group at half the grace period, SIGKILL it at the full grace period."""
        if self._stop_started is None or self.poll() is not None:
            return
        waited = time.monotonic() - self._stop_started
        if waited >= grace_s and not self._killed:
            self.kill()
        elif waited >= grace_s / 2 and not self._termed:
            self._termed = True
            self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the whole process group at once."""
        self._killed = True
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout_s: float | None = None) -> int:
        return self.proc.wait(timeout_s)

    def reap_group(self) -> None:
        """After the trainer exits, kill anything it left in its process group."""
        self._signal(signal.SIGKILL)

    def stderr_tail(self, lines: int = 40, max_bytes: int = 16_384) -> str:
        try:
            with open(self.stderr_path, "rb") as handle:
                handle.seek(max(0, handle.seek(0, os.SEEK_END) - max_bytes))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def classify_exit(returncode: int, stderr_tail: str, *, stop_requested: bool, killed_for: str | None) -> Exit:
    """Map a trainer's end to an outcome (DESIGN §7).

    ``killed_for`` names why the worker killed it (a hang, say): always transient.
    """
    if killed_for is not None:
        return Exit("failed", "transient", killed_for)
    if returncode == 0:
        return Exit("stopped" if stop_requested else "succeeded", None, "exit 0")
    if returncode == EX_TEMPFAIL:
        return Exit("failed", "transient", f"exit {EX_TEMPFAIL} (EX_TEMPFAIL): {_last_line(stderr_tail)}")
    if returncode == EX_CONFIG:
        return Exit("failed", "permanent", f"exit {EX_CONFIG} (EX_CONFIG): {_last_line(stderr_tail)}")
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.Signals._value2member_map_ else returncode
        if stop_requested:
            return Exit("stopped", None, f"killed by {name} while stopping")
        return Exit("failed", "transient", f"killed by {name} (out of memory, or the platform?)")
    if TRANSIENT_PATTERNS.search(stderr_tail):
        return Exit("failed", "transient", f"exit {returncode}: {_last_line(stderr_tail)}")
    if PERMANENT_PATTERNS.search(stderr_tail):
        return Exit("failed", "permanent", f"exit {returncode}: {_last_line(stderr_tail)}")
    return Exit("failed", "transient", f"exit {returncode}: {_last_line(stderr_tail)}")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "(no stderr)"
