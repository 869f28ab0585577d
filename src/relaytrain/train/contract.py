"""The trainer side of the environment contract (DESIGN §6).

The worker starts a trainer with ``RELAY_*`` variables; the trainer reads them once, at its
entry point, through ``Contract.from_env()`` — library code takes a ``Contract`` argument and
never reads the environment itself.

Usage::

    contract = Contract.from_env()
    contract.install_signal_handlers()      # entry points only: SIGTERM/SIGINT set a flag
    while not contract.should_stop(): ...
    contract.report_progress(step, {"loss": 0.5})
    contract.report_checkpoint(step, path)  # once the checkpoint is committed
    sys.exit(EX_OK)

Public API: ``Contract`` (``from_env``, ``local``, ``install_signal_handlers``,
``request_stop``, ``should_stop``, ``stop_reason``, ``report_progress``,
``report_checkpoint``, ``close``), exit codes ``EX_OK`` (0: done or stopped as asked),
``EX_TEMPFAIL`` (75: transient, retry), ``EX_CONFIG`` (78: permanent configuration error),
and ``exit_code_for(exc)``, which classifies an exception that escaped a trainer.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from relaytrain.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

EX_OK = 0
EX_TEMPFAIL = 75
EX_CONFIG = 78

_TRANSIENT_MARKERS = (
    "out of memory",
    "cuda error",
    "cudnn_status",
    "nccl",
    "cublas_status_alloc_failed",
    "connection reset",
    "timed out",
)


@dataclass
class Contract:
    """What the worker told the trainer, and the trainer's two channels back: progress and stop.

    ``resume_from`` is a verified checkpoint folder to resume from (full state), or None for a
    fresh start; ``init_from`` a checkpoint or model folder (or hub id) whose weights start a
    new run; ``max_steps`` the run's target step (None: the config's).
    """

    output_dir: Path
    run_id: str = "local"
    epoch: int = 0
    run_root: Path | None = None
    resume_from: Path | None = None
    init_from: str | None = None
    max_steps: int | None = None
    progress_file: Path | None = None
    stop_file: Path | None = None
    rollout_trajectory_root: Path | None = None
    rollout_trajectory_pattern: str | None = None
    _stop_signal: str | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _progress: IO[str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        if self.run_root is None:
            self.run_root = self.output_dir.parent

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Contract:
        """Read the ``RELAY_*`` variables (``os.environ`` by default); empty means unset.

        ``RELAY_OUTPUT_DIR`` is required; ``RELAY_EPOCH`` and ``RELAY_MAX_STEPS`` must be
        integers. Raises ``ConfigError`` naming the variable otherwise.
        """
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def path(name: str) -> Path | None:
            value = get(name)
            return Path(value) if value else None

        def integer(name: str) -> int | None:
            value = get(name)
            if value is None:
                return None
            try:
                return int(value)
            except ValueError as exc:
                raise ConfigError(f"{name}: must be an integer, got {value!r}") from exc

        output_dir = path("RELAY_OUTPUT_DIR")
        if output_dir is None:
            raise ConfigError("RELAY_OUTPUT_DIR: required (the folder the trainer writes checkpoints to)")
        max_steps = integer("RELAY_MAX_STEPS")
        if max_steps is not None and max_steps < 1:
            raise ConfigError(f"RELAY_MAX_STEPS: must be ≥ 1, got {max_steps}")
        return cls(
            output_dir=output_dir,
            run_id=get("RELAY_RUN_ID") or "local",
            epoch=integer("RELAY_EPOCH") or 0,
            run_root=path("RELAY_RUN_ROOT"),
            resume_from=path("RELAY_RESUME_FROM"),
            init_from=get("RELAY_INIT_FROM"),
            max_steps=max_steps,
            progress_file=path("RELAY_PROGRESS_FILE"),
            stop_file=path("RELAY_STOP_FILE"),
            rollout_trajectory_root=path("RELAY_ROLLOUT_TRAJECTORY_ROOT"),
            rollout_trajectory_pattern=get("RELAY_ROLLOUT_TRAJECTORY_PATTERN"),
        )

    @classmethod
    def local(cls, output_dir: str | Path, **overrides: Any) -> Contract:
        """A contract for a run with no worker: progress in ``DIR/progress.jsonl``, stop file ``DIR/STOP``."""
        output_dir = Path(output_dir)
        overrides.setdefault("progress_file", output_dir / "progress.jsonl")
        overrides.setdefault("stop_file", output_dir / "STOP")
        overrides.setdefault("run_root", output_dir)
        return cls(output_dir=output_dir, **overrides)

    # -- stopping ---------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Make SIGTERM and SIGINT only ask for a stop (checkpoint, then exit 0).

        Call from the main thread of an entry point; library code never installs handlers.
        """

        def handler(signum: int, _frame: FrameType | None) -> None:
            self.request_stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def request_stop(self, reason: str = "requested") -> None:
        """Ask the trainer to checkpoint at the next step boundary and exit 0."""
        if self._stop_signal is None:
            self._stop_signal = reason

    def should_stop(self) -> bool:
        """True once a stop was requested (signal, ``request_stop``) or the stop file exists."""
        if self._stop_signal is not None:
            return True
        if self.stop_file is not None and self.stop_file.exists():
            self._stop_signal = "stop file"
            return True
        return False

    @property
    def stop_reason(self) -> str | None:
        """Why the trainer is stopping (``"SIGTERM"``, ``"stop file"``, …), or None."""
        return self._stop_signal

    # -- reporting --------------------------------------------------------------------------

    def report_progress(self, step: int, metrics: Mapping[str, float | int | str | None]) -> None:
        """Append ``{"step": N, "metrics": {...}}`` to the progress file, flushed.

        Non-finite floats (a NaN loss) are written as null, keeping every line valid JSON.
        """
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self._append({"step": int(step), "metrics": clean})

    def report_checkpoint(self, step: int, path: str | Path) -> None:
        """Append ``{"event": "checkpoint", "step": N, "path": ABS}``; call once the checkpoint is committed.

        Safe to call from a background (async save) thread.
        """
        self._append({"event": "checkpoint", "step": int(step), "path": str(Path(path).resolve())})

    def report_event(self, event: str, **fields: Any) -> None:
        """Append any other event line, e.g. ``{"event": "resumed", "step": 200, "path": …}``.

        Event lines always carry ``"event"``; only progress lines carry ``"metrics"``.
        """
        self._append({"event": event, **fields})

    def _append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
        if self.progress_file is None:
            log.debug("progress: %s", line.rstrip(), extra={"run_id": self.run_id, "epoch": self.epoch})
            return
        with self._lock:
            if self._progress is None:
                self.progress_file.parent.mkdir(parents=True, exist_ok=True)
                self._progress = self.progress_file.open("a", encoding="utf-8")
            self._progress.write(line)
            self._progress.flush()

    def close(self) -> None:
        """Close the progress file (it is reopened on the next report)."""
        with self._lock:
            if self._progress is not None:
                self._progress.close()
                self._progress = None


def exit_code_for(exc: BaseException) -> int | None:
    """The contract exit code for an exception that ended a trainer, or None to let it crash.

    ``EX_CONFIG`` for configuration, dataset and import errors (retrying cannot help);
    ``EX_TEMPFAIL`` for out-of-memory, CUDA/NCCL and network-like errors; None otherwise (the
    worker classifies the crash from the exit status and the stderr tail).
    """
    if isinstance(exc, ConfigError | ImportError):
        return EX_CONFIG
    if isinstance(exc, CheckpointError):
        return EX_TEMPFAIL
    torch = sys.modules.get("torch")  # only a trainer that imported torch can raise its errors
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return EX_TEMPFAIL
    if isinstance(exc, MemoryError | ConnectionError | TimeoutError):
        return EX_TEMPFAIL
    if isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _TRANSIENT_MARKERS):
        return EX_TEMPFAIL
    return None
