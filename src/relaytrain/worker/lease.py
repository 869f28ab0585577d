"""The lease keeper: renews every ttl/3 and self-fences (DESIGN §4).

The keeper's own deadline runs on the monotonic clock from the moment each successful renew
was *sent*: if no renewal has succeeded by ``deadline = sent + ttl − margin`` the trainer must
stop, before the commander could grant the run to anyone else.
"""

from __future__ import annotations

import logging
import time

from relaytrain.api.client import RelayClient
from relaytrain.errors import LeaseLost, NotFound, RelayError

from .guard import Guarded, StopFn, StopReason

log = logging.getLogger(__name__)


class LeaseKeeper(Guarded):
    what = "lease keeper"

    def __init__(self, client: RelayClient, run_id: str, worker_id: str, epoch: int, *, ttl_s: float,
                 margin_s: float, granted_at_monotonic: float, on_stop: StopFn) -> None:
        super().__init__("lease", client, run_id, worker_id, epoch, on_stop)
        self.ttl_s = ttl_s
        self.margin_s = margin_s
        self.deadline = granted_at_monotonic + ttl_s - margin_s
        self.renewals = 0

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(timeout=self.ttl_s)

    @property
    def fenced(self) -> bool:
        return time.monotonic() >= self.deadline

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
                silent = self.ttl_s - self.margin_s
                self.on_stop(StopReason.FENCED, f"no renewal succeeded for {silent:.0f}s: self-fenced")
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
            self.on_stop(StopReason.LOST, f"lease refused by the commander: {exc}")
            return None
        except RelayError as exc:
            log.warning("renewal of %s failed (%s); self-fence in %.1fs", self.run_id, exc,
                        self.deadline - time.monotonic())
            return time.monotonic() + min(2.0, interval)
        self.renewals += 1
        self.deadline = sent + answer.ttl_s - self.margin_s
        if answer.cancel_requested:
            self.on_stop(StopReason.CANCELLED, "cancel requested")
        return sent + interval
