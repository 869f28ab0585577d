"""How a trainer ends (DESIGN §6–7): the exit codes, and the one failure classifier that both
the trainer (``exit_code_for``: an exception → a code) and the worker (``classify_exit``: a
code and a stderr tail → an outcome) use."""

from __future__ import annotations

import errno
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
    MACHINE = "machine"
    """The machine failed the run, not the run itself (:class:`MachineFault`): retried at once, on
    another worker if one can take it, without spending a retry."""


class MachineFault(StrEnum):
    """Which part of the worker's machine failed an attempt (a ``machine`` failure)."""

    DISK = "disk"
    """The run root's filesystem is full (ENOSPC) or over quota (EDQUOT)."""
    GPU = "gpu"
    """A GPU reported an Xid, an uncorrectable ECC error, or fell off the bus."""
    STORE = "store"
    """This machine cannot reach the run's artifact store (the worker's own upload or download)."""


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""The ``OSError.errno`` values of a full disk."""


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


MACHINE_PATTERNS: dict[MachineFault, re.Pattern[str]] = {
    MachineFault.DISK: re.compile(
        r"No space left on device|Disk quota exceeded|\[Errno (28|122)\]|\bE(NOSPC|DQUOT)\b|"
        # torch.save on a full disk: the zip writer's short write, checked by PyTorch's enforce
        r"PytorchStreamWriter failed writing|"
        r"enforce fail at inline_container\.cc:\d+\] \. unexpected pos \d+ vs \d+",
        re.IGNORECASE,
    ),
    MachineFault.GPU: re.compile(
        r"\bNVRM: Xid\b|\bXid \(PCI:|uncorrectable ECC error|CUDA error:[^\n]*\bECC\b|ECC error encountered|"
        r"GPU has fallen off the bus|cudaErrorECCUncorrectable",
        re.IGNORECASE,
    ),
}
"""Text that names a fault of the machine, not of the run (checked before everything else)."""


def machine_fault(text: str) -> MachineFault | None:
    """The machine fault ``text`` (a stderr tail, an error message) shows, or None. A store this
    machine cannot reach is never read from text: only the worker knows the failing call was its own."""
    for fault, pattern in MACHINE_PATTERNS.items():
        if pattern.search(text):
            return fault
    return None


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from, is a full disk (``DISK_FULL_ERRNOS``)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if machine_fault(str(exc)) is MachineFault.DISK:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def classify_text(text: str) -> FailureClass | None:
    """The class that ``text`` (a stderr tail or an error message) shows, or None: a machine's
    fault wins over everything (a full disk is not the run's fault, whatever it broke), transient
    markers over permanent ones (an OOM inside an import is still an OOM)."""
    if machine_fault(text) is not None:
        return FailureClass.MACHINE
    if TRANSIENT_PATTERNS.search(text):
        return FailureClass.TRANSIENT
    if PERMANENT_PATTERNS.search(text):
        return FailureClass.PERMANENT
    return None


def exit_code_for(exc: BaseException) -> int | None:
    """The contract exit code for an exception that ended a trainer, or None to let it crash.

    ``CONFIG`` for configuration, dataset and import errors (retrying cannot help);
    ``TEMPFAIL`` for out-of-memory, CUDA/NCCL, checkpoint-write, full-disk and network-like errors
    (the worker tells a machine's fault from the stderr tail: :func:`classify_exit`); None otherwise
    (the worker then classifies the crash from the stderr tail).
    """
    if isinstance(exc, ConfigError | ImportError):
        return ExitCode.CONFIG
    if isinstance(exc, CheckpointError | MemoryError | ConnectionError | TimeoutError) or disk_full(exc):
        return ExitCode.TEMPFAIL
    torch = sys.modules.get("torch")  # only a trainer that imported torch can raise its errors
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return ExitCode.TEMPFAIL
    if isinstance(exc, RuntimeError) and classify_text(str(exc)) in (FailureClass.TRANSIENT, FailureClass.MACHINE):
        return ExitCode.TEMPFAIL
    return None


@dataclass(frozen=True)
class Exit:
    """How a trainer ended: its outcome for the commander and why."""

    outcome: Outcome
    failure_class: FailureClass | None
    message: str
    fault: MachineFault | None = None
    """Which part of the machine failed, for a ``machine`` failure."""


def classify_exit(returncode: int, stderr_tail: str, *, stop_requested: bool, killed_for: str | None) -> Exit:
    """Map a trainer's end to an outcome (DESIGN §7).

    ``killed_for`` names why the worker killed it (a hang, say): always transient. A negative
    ``returncode`` is a signal (``Popen`` convention). A failure whose stderr tail shows a machine
    fault (:data:`MACHINE_PATTERNS`) is the machine's, whatever the code, except ``EX_CONFIG``: the
    trainer said the run is wrong.
    """
    if killed_for is not None:
        return Exit(Outcome.FAILED, FailureClass.TRANSIENT, killed_for)
    if returncode == ExitCode.OK:
        return Exit(Outcome.STOPPED if stop_requested else Outcome.SUCCEEDED, None, "exit 0")
    fault = machine_fault(stderr_tail)
    if fault is not None and returncode != ExitCode.CONFIG and not (returncode < 0 and stop_requested):
        return Exit(Outcome.FAILED, FailureClass.MACHINE,
                    f"exit {returncode} ({fault} fault): {last_line(stderr_tail)}", fault)
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
