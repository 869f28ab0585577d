"""The lease keeper: renews every ttl/3 and self-fences (DESIGN §4).

The keeper's own deadline runs on the monotonic clock from the moment each successful renew
was *sent*: if no renewal has succeeded by ``deadline = sent + ttl − margin`` the trainer must
stop, before the commander could grant the run to anyone else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from relaytrain.api.client import RelayClient
from relaytrain.errors import LeaseLost, NotFound, RelayError

log = logging.getLogger(__name__)

StopFn = Callable[[str, str], None]
"""``stop(reason, message)``: reasons ``lost``, ``fenced``, ``cancelled``, ``crashed``."""


class LeaseKeeper:
    def __init__(self, client: RelayClient, run_id: str, worker_id: str, epoch: int, *, ttl_s: float,
                 margin_s: float, granted_at_monotonic: float, on_stop: StopFn) -> None:
        self.client = client
        self.run_id = run_id
        self.worker_id = worker_id
        self.epoch = epoch
        self.ttl_s = ttl_s
        self.margin_s = margin_s
        self.on_stop = on_stop
        self.deadline = granted_at_monotonic + ttl_s - margin_s
        self.renewals = 0
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._guarded, name=f"lease-{run_id}", daemon=True)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(timeout=self.ttl_s)

    @property
    def fenced(self) -> bool:
        return time.monotonic() >= self.deadline

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # a dead keeper must stop the trainer, never die silently
            log.exception("lease keeper of %s died", self.run_id)
            self.on_stop("crashed", f"lease keeper died: {type(exc).__name__}: {exc}")

    def _run(self) -> None:
        interval = self.ttl_s / 3
        next_renew = time.monotonic()  # at once: the claim's long poll may have eaten into the deadline
        while True:
            if time.monotonic() >= next_renew:
                next_renew = self._renew(interval)
                if next_renew is None:
                    return
            now = time.monotonic()
            if now >= self.deadline:
                self.on_stop("fenced", f"no renewal succeeded for {self.ttl_s - self.margin_s:.0f}s: self-fenced")
                return
            if self._halt.wait(max(0.0, min(next_renew, self.deadline) - now)):
                return

    def _renew(self, interval: float) -> float | None:
        """Renew once; returns when to renew next, or None when the lease is gone."""
        sent = time.monotonic()
        try:
            answer = self.client.renew(self.run_id, self.worker_id, self.epoch,
                                       timeout_s=max(1.0, min(interval, self.deadline - sent)), retries=0)
        except (LeaseLost, NotFound) as exc:
            self.on_stop("lost", f"lease refused by the commander: {exc}")
            return None
        except RelayError as exc:
            log.warning("renewal of %s failed (%s); self-fence in %.1fs", self.run_id, exc,
                        self.deadline - time.monotonic())
            return time.monotonic() + min(2.0, interval)
        self.renewals += 1
        self.deadline = sent + answer.ttl_s - self.margin_s
        if answer.cancel_requested:
            self.on_stop("cancelled", "cancel requested")
        return sent + interval
