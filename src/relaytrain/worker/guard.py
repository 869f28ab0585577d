"""A worker's background task never dies silently (STYLE 12): if the body of a ``Guarded``
thread raises, the error is logged and the attempt is stopped as ``crashed`` — the trainer is
stopped and the failure reported, instead of a lease renewed, or checkpoints uploaded, by
nobody."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from enum import StrEnum

from relaytrain.api.client import RelayClient

log = logging.getLogger(__name__)

class StopReason(StrEnum):
    """Why an attempt is ending early, most serious first: when several arrive, the most serious
    one decides how the attempt is released."""

    LOST = "lost"            # the commander refused a fenced call: the lease is someone else's
    CRASHED = "crashed"      # a background task of the worker died
    FENCED = "fenced"        # no renewal in time: the worker fenced itself
    PREEMPTED = "preempted"  # the machine is going away (SIGTERM to the worker)
    CANCELLED = "cancelled"  # a person cancelled the run

    @property
    def severity(self) -> int:
        return len(StopReason) - list(StopReason).index(self)


StopFn = Callable[[StopReason, str], None]
"""``stop(reason, message)``."""


class Guarded:
    """A daemon thread running :meth:`_run` for one lease — ``(run_id, worker_id, epoch)``, the
    identity every fenced call to the commander carries; ``what`` names it in a crash report."""

    what = "background task"

    def __init__(self, kind: str, client: RelayClient, run_id: str, worker_id: str, epoch: int,
                 on_stop: StopFn) -> None:
        self.client = client
        self.run_id = run_id
        self.worker_id = worker_id
        self.epoch = epoch
        self.on_stop = on_stop
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._guarded, name=f"{kind}-{run_id}", daemon=True)

    def start(self):  # noqa: ANN201 - returns self, typed by each subclass
        self._thread.start()
        return self

    def _run(self) -> None:
        raise NotImplementedError

    def _died(self, exc: BaseException) -> None:
        """Called once, on the thread, when ``_run`` raised."""
        log.exception("%s of %s died", self.what, self.run_id)
        self.on_stop(StopReason.CRASHED, f"{self.what} died: {type(exc).__name__}: {exc}")

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # a dead task must stop the trainer, never die silently
            self._died(exc)
