"""A worker's background task never dies silently (STYLE 12): if the body of a ``Guarded``
thread raises, the error is logged and the attempt is stopped as ``crashed`` — the trainer is
stopped and the failure reported, instead of a lease renewed, or checkpoints uploaded, by
nobody."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

StopFn = Callable[[str, str], None]
"""``stop(reason, message)``: reasons ``lost``, ``fenced``, ``cancelled``, ``crashed``."""


class Guarded:
    """A daemon thread running :meth:`_run`; ``what`` names it in the crash report."""

    what = "background task"

    def __init__(self, name: str, on_stop: StopFn) -> None:
        self.on_stop = on_stop
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._guarded, name=name, daemon=True)

    def start(self):  # noqa: ANN201 - returns self, typed by each subclass
        self._thread.start()
        return self

    def _run(self) -> None:
        raise NotImplementedError

    def _died(self, exc: BaseException) -> None:
        """Called once, on the thread, when ``_run`` raised."""
        log.exception("%s of %s died", self.what, self._thread.name)
        self.on_stop("crashed", f"{self.what} died: {type(exc).__name__}: {exc}")

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # a dead task must stop the trainer, never die silently
            self._died(exc)
