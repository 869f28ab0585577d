"""The retry policy (DESIGN §7) as one pure decision: what a run becomes when an attempt ends.

- ``succeeded`` → the run succeeded;
- ``cancelled``, or any outcome once a cancel was asked → cancelled;
- ``preempted`` → queued again at once, spending no retry;
- ``failed`` and ``machine`` (the worker's machine failed it: a full disk, a sick GPU) → queued
  again at once, spending no retry; the release keeps it from that worker for a while
  (:data:`MACHINE_AVOID_S`, :func:`relaytrain.commander.store.leases.release`);
- ``failed`` and ``permanent`` → failed;
- ``failed`` and ``transient`` → queued after a backoff, spending one retry; once the retries
  are spent, failed.

:meth:`relaytrain.commander.store.Store.release_lease` applies it inside the release's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from relaytrain.api.status import AttemptOutcome, FailureClass, RunStatus
from relaytrain.config import RetryPolicy

MACHINE_AVOID_S = 120.0
"""After a machine fault, the run is not granted back to that worker for this long, unless another
worker took it since (anti-affinity); then any worker may have it again."""


@dataclass(frozen=True)
class Decision:
    """What a run becomes after an attempt."""

    status: RunStatus
    retries_used: int
    backoff_s: float = 0.0
    """Seconds before the run may be granted again (``not_before`` = now + this)."""
    last_error: str | None = None
    """The run's new ``last_error``; None keeps the one it has."""


def next_status(outcome: AttemptOutcome, failure_class: FailureClass | None, retries_used: int, policy: RetryPolicy, *,
                cancel_requested: bool = False, message: str | None = None) -> Decision:
    """The run's next status after an attempt ended with ``outcome`` (and, for ``failed``, its
    ``failure_class``), given the retries it had used, its policy, whether a cancel was asked,
    and the attempt's ``message`` (for ``last_error``)."""
    said = message or "no message"
    if outcome == AttemptOutcome.SUCCEEDED:
        return Decision(RunStatus.SUCCEEDED, retries_used)
    if outcome == AttemptOutcome.CANCELLED or cancel_requested:
        return Decision(RunStatus.CANCELLED, retries_used)
    if outcome in (AttemptOutcome.PREEMPTED, AttemptOutcome.LOST):
        return Decision(RunStatus.QUEUED, retries_used)
    if failure_class == FailureClass.MACHINE:
        return Decision(RunStatus.QUEUED, retries_used,
                        last_error=f"machine fault (not counted in retries): {said}")
    if failure_class == FailureClass.PERMANENT:
        return Decision(RunStatus.FAILED, retries_used, last_error=f"permanent failure: {said}")
    retries = retries_used + 1
    if retries > policy.max_retries:
        return Decision(RunStatus.FAILED, retries,
                        last_error=f"retries exhausted ({policy.max_retries}); last error: {said}")
    return Decision(RunStatus.QUEUED, retries, backoff_s=policy.backoff_s(retries),
                    last_error=f"transient failure ({retries}/{policy.max_retries} retries): {said}")
