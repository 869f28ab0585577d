"""The lease keeper: renews every ttl/3, self-fences (DESIGN §4), and holds the lease in jeopardy
while the commander cannot be reached.

The keeper's own deadline runs on the monotonic clock from the moment each successful renew
was *sent*: if no renewal has succeeded by ``deadline = sent + ttl − margin`` the trainer must
stop doing work, before the commander could grant the run to anyone else.

How it stops depends on why the renewals failed (Chubby's grace period). If the commander
answered with a refusal (409 and the like), or ``jeopardy_s`` is 0, the trainer is stopped: the
self-fence. If it could not be reached at all (:func:`relaytrain.errors.commander_unreachable`),
the trainer's process tree is *paused* (SIGSTOP: it does no work, so the lease may expire
without two machines ever training) and the keeper keeps renewing: the first renewal that
succeeds resumes it, a refusal kills it, and ``jeopardy_s`` spent paused ends it as a self-fence.
A commander back from an outage extends every running lease by the time it was down
(docs/commander.md), so a renewal after an outage is confirmed, while one after a partition of
this worker alone (the commander up, the lease expired) is refused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from relaytrain.api.client import RelayClient
from relaytrain.errors import LeaseLost, NotFound, RelayError, commander_unreachable

from .guard import Guarded, StopFn, StopReason

log = logging.getLogger(__name__)

JeopardyFn = Callable[[bool], None]
"""``jeopardy(paused)``: True when the trainer must pause, False when it may resume."""

RETRY_S = 2.0
"""The longest wait between two renewals that failed (in jeopardy too)."""


class LeaseKeeper(Guarded):
    what = "lease keeper"

    def __init__(self, client: RelayClient, run_id: str, worker_id: str, epoch: int, *, ttl_s: float,
                 margin_s: float, granted_at_monotonic: float, on_stop: StopFn, jeopardy_s: float = 0.0,
                 on_jeopardy: JeopardyFn | None = None) -> None:
        super().__init__("lease", client, run_id, worker_id, epoch, on_stop)
        self.ttl_s = ttl_s
        self.margin_s = margin_s
        self.jeopardy_s = jeopardy_s if on_jeopardy is not None else 0.0
        self.on_jeopardy = on_jeopardy
        self.deadline = granted_at_monotonic + ttl_s - margin_s
        self.renewals = 0
        self.paused_since: float | None = None
        """When the keeper entered jeopardy (monotonic), while it is in it."""
        self.pauses: list[float] = []
        """How long each past jeopardy lasted, in seconds."""
        self._unreachable = False  # whether the last renewal failed for want of a commander

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
            if self.paused_since is None and now >= self.deadline:
                if not (self._unreachable and self.jeopardy_s > 0):
                    silent = self.ttl_s - self.margin_s
                    self.on_stop(StopReason.FENCED, f"no renewal succeeded for {silent:.0f}s: self-fenced")
                    return
                self._enter_jeopardy(now)
            if self.paused_since is not None and now >= self.paused_since + self.jeopardy_s:
                self.on_stop(StopReason.FENCED, f"the commander stayed unreachable for {self.jeopardy_s:g}s in "
                                                "lease jeopardy (lease.jeopardy_s): self-fenced")
                return
            wake = self.paused_since + self.jeopardy_s if self.paused_since is not None else self.deadline
            if self._halt.wait(max(0.0, min(next_renew, wake) - now)):
                return

    def _enter_jeopardy(self, now: float) -> None:
        self.paused_since = now
        log.warning("the commander is unreachable: the trainer of %s is paused in lease jeopardy; it resumes when "
                    "the commander confirms the lease, and is killed after %gs or on a refusal",
                    self.run_id, self.jeopardy_s)
        self.on_jeopardy(True)

    def _leave_jeopardy(self) -> None:
        paused_for = time.monotonic() - self.paused_since
        self.paused_since = None
        self.pauses.append(paused_for)
        log.warning("the commander confirmed the lease of %s after %.1fs in jeopardy: the trainer resumes",
                    self.run_id, paused_for)
        self.on_jeopardy(False)

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
            self._unreachable = commander_unreachable(exc)
            if self.paused_since is not None and not self._unreachable:
                self.on_stop(StopReason.FENCED, f"renewal refused in lease jeopardy ({exc}): self-fenced")
                return None
            left = self.deadline - time.monotonic()
            log.warning("renewal of %s failed (%s); %s", self.run_id, exc,
                        "in lease jeopardy" if self.paused_since is not None else f"self-fence in {left:.1f}s")
            return time.monotonic() + min(RETRY_S, interval)
        self._unreachable = False
        self.renewals += 1
        self.deadline = sent + answer.ttl_s - self.margin_s
        if self.paused_since is not None:
            self._leave_jeopardy()
        if answer.cancel_requested:
            self.on_stop(StopReason.CANCELLED, "cancel requested")
        return sent + interval
