"""How a trainer ends (DESIGN §6–7): the exit codes, and the one failure classifier that both
the trainer (``exit_code_for``: an exception → a code) and the worker (``classify_exit``: a
code and a stderr tail → an outcome) use."""

from __future__ import annotations

import re
import signal
import sys
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from relaytrain.errors import CheckpointError, ConfigError


class ExitCode(IntEnum):
    """The exit codes a trainer speaks (sysexits.h)."""

    OK = 0
    """Finished, or stopped as asked after a checkpoint."""
    TEMPFAIL = 75
    """``EX_TEMPFAIL``: a transient failure; retry (spends a retry)."""
    CONFIG = 78
    """``EX_CONFIG``: a permanent configuration error; do not retry."""


class FailureClass(StrEnum):
    """Why an attempt failed, which decides the retry (DESIGN §7)."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"


class Outcome(StrEnum):
    """How a trainer process ended, as the worker sees it."""

    SUCCEEDED = "succeeded"
    STOPPED = "stopped"
    FAILED = "failed"


TRANSIENT_PATTERNS = re.compile(
    r"CUDA out of memory|OutOfMemoryError|out of memory|CUDA error|CUDNN_STATUS|CUBLAS_STATUS_ALLOC_FAILED|"
    r"NCCL|ncclInternalError|Connection (reset|refused)|timed? ?out|Temporary failure in name resolution|"
    r"ECC error|cudaErrorLaunchFailure|device-side assert|Bus error",
    re.IGNORECASE,
)
"""Text (an exception message, a stderr tail) that marks a failure a retry may fix."""

PERMANENT_PATTERNS = re.compile(
    r"^(ModuleNotFoundError|ImportError|SyntaxError|FileNotFoundError|IsADirectoryError|NotADirectoryError"
    r"|relaytrain\.errors\.ConfigError|ConfigError)\b",
    re.MULTILINE,
)
"""A stderr line that names an error no retry can fix (at the start of a line, as tracebacks end)."""


def classify_text(text: str) -> FailureClass | None:
    """The class that ``text`` (a stderr tail or an error message) shows, or None: transient
    markers win over permanent ones (an OOM inside an import is still an OOM)."""
    if TRANSIENT_PATTERNS.search(text):
        return FailureClass.TRANSIENT
    if PERMANENT_PATTERNS.search(text):
        return FailureClass.PERMANENT
    return None


def exit_code_for(exc: BaseException) -> int | None:
    """The contract exit code for an exception that ended a trainer, or None to let it crash.

    ``CONFIG`` for configuration, dataset and import errors (retrying cannot help);
    ``TEMPFAIL`` for out-of-memory, CUDA/NCCL, checkpoint-write and network-like errors;
    None otherwise (the worker then classifies the crash from the stderr tail).
    """
    if isinstance(exc, ConfigError | ImportError):
        return ExitCode.CONFIG
    if isinstance(exc, CheckpointError | MemoryError | ConnectionError | TimeoutError):
        return ExitCode.TEMPFAIL
    torch = sys.modules.get("torch")  # only a trainer that imported torch can raise its errors
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return ExitCode.TEMPFAIL
    if isinstance(exc, RuntimeError) and classify_text(str(exc)) is FailureClass.TRANSIENT:
        return ExitCode.TEMPFAIL
    return None


@dataclass(frozen=True)
class Exit:
    """How a trainer ended: its outcome for the commander and why."""

    outcome: Outcome
    failure_class: FailureClass | None
    message: str


def classify_exit(returncode: int, stderr_tail: str, *, stop_requested: bool, killed_for: str | None) -> Exit:
    """Map a trainer's end to an outcome (DESIGN §7).

    ``killed_for`` names why the worker killed it (a hang, say): always transient. A negative
    ``returncode`` is a signal (``Popen`` convention).
    """
    if killed_for is not None:
        return Exit(Outcome.FAILED, FailureClass.TRANSIENT, killed_for)
    if returncode == ExitCode.OK:
        return Exit(Outcome.STOPPED if stop_requested else Outcome.SUCCEEDED, None, "exit 0")
    if returncode == ExitCode.TEMPFAIL:
        return Exit(Outcome.FAILED, FailureClass.TRANSIENT,
                    f"exit {returncode} (EX_TEMPFAIL): {last_line(stderr_tail)}")
    if returncode == ExitCode.CONFIG:
        return Exit(Outcome.FAILED, FailureClass.PERMANENT, f"exit {returncode} (EX_CONFIG): {last_line(stderr_tail)}")
    if returncode < 0:
        try:
            name: str | int = signal.Signals(-returncode).name
        except ValueError:
            name = returncode
        if stop_requested:
            return Exit(Outcome.STOPPED, None, f"killed by {name} while stopping")
        return Exit(Outcome.FAILED, FailureClass.TRANSIENT, f"killed by {name} (out of memory, or the platform?)")
    failure = classify_text(stderr_tail) or FailureClass.TRANSIENT  # unknown crashes spend a retry
    return Exit(Outcome.FAILED, failure, f"exit {returncode}: {last_line(stderr_tail)}")


def last_line(text: str) -> str:
    """The last non-blank line of ``text`` (at most 500 characters), or ``(no stderr)``."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "(no stderr)"
