"""The trainer's side of the contract: read what the worker said, report progress and
checkpoints, stop when asked.

Usage::

    contract = Contract.from_env()
    contract.install_signal_handlers()      # entry points only: SIGTERM/SIGINT set a flag
    while not contract.should_stop(): ...
    contract.report_progress(step, {"loss": 0.5})
    contract.report_checkpoint(step, path)  # once the checkpoint is committed
    sys.exit(ExitCode.OK)

Library code takes a ``Contract`` argument and never reads the environment itself.

Under torchrun every rank builds its own ``Contract``: ``rank``, ``world_size``, ``local_rank``
come from torchrun's variables, and only rank 0 (``is_main``) writes progress and event lines
— the others' reports write nothing, so the attempt speaks with one voice. Every rank honours
the stop file and SIGTERM on its own (``should_stop`` stays local: a trainer that needs its
ranks to agree combines it across them).

Public API: ``Contract``.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from .env import TrainerEnv
from .layout import DEFAULT_TRAJECTORY_SUBDIR, trajectory_name
from .lines import CHECKPOINT_EVENT, FILE_EVENT, event_line, progress_line

log = logging.getLogger(__name__)


@dataclass
class Contract(TrainerEnv):
    """What the worker told the trainer (``TrainerEnv``), and the trainer's two channels back:
    progress and stop."""

    _stop_signal: str | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _progress: IO[str] | None = field(default=None, init=False, repr=False)

    @classmethod
    def local(cls, output_dir: str | Path, **overrides: Any) -> Contract:
        """A contract for a run with no worker: progress in ``DIR/progress.jsonl``, stop file ``DIR/STOP``."""
        output_dir = Path(output_dir)
        overrides.setdefault("progress_file", output_dir / "progress.jsonl")
        overrides.setdefault("stop_file", output_dir / "STOP")
        overrides.setdefault("run_root", output_dir)
        return cls(output_dir=output_dir, **overrides)

    def trajectory_path(self, rollout_id: int, subdir: str = DEFAULT_TRAJECTORY_SUBDIR) -> Path:
        """Where trajectory ``rollout_id`` goes: ``RELAY_ROLLOUT_TRAJECTORY_ROOT`` (else
        ``<run_root>/<subdir>``) / the pattern rendered."""
        root = self.rollout_trajectory_root or Path(self.run_root or self.output_dir.parent) / subdir
        return root / trajectory_name(self.rollout_trajectory_pattern, rollout_id)

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

    # -- ranks ------------------------------------------------------------------------------

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes progress and events for the attempt (always true
        outside torchrun)."""
        return self.rank == 0

    # -- reporting (rank 0 only) ------------------------------------------------------------

    def report_progress(self, step: int, metrics: Mapping[str, float | int | str | None]) -> None:
        """Append ``{"step": N, "metrics": {...}}`` to the progress file, flushed."""
        self._append(progress_line(step, metrics))

    def report_checkpoint(self, step: int, path: str | Path) -> None:
        """Announce a committed checkpoint; safe to call from a background (async save) thread."""
        self._append(event_line(CHECKPOINT_EVENT, step=int(step), path=str(Path(path).resolve())))

    def report_file(self, path: str | Path, run_id: str, name: str) -> None:
        """Ask the worker to store ``path`` as the file ``name`` of ``run_id`` in the run's store
        (it does so in the background, and before it releases the run)."""
        self._append(event_line(FILE_EVENT, path=str(Path(path).resolve()), run_id=run_id, name=name))

    def report_event(self, event: str, **fields: Any) -> None:
        """Append any other event line, e.g. ``{"event": "resumed", "step": 200, "path": …}``."""
        self._append(event_line(event, **fields))

    def _append(self, line: str) -> None:
        if not self.is_main:
            return  # rank 0 speaks for the attempt
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
