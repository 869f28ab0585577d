"""The retry policy (DESIGN §7) as a table: outcome, failure class, retries used, cancel asked →
the run's next status, retries used, backoff, and whether last_error changes."""

from __future__ import annotations

import pytest

from relaytrain.api.status import AttemptOutcome, FailureClass, RunStatus
from relaytrain.commander.policy import next_status
from relaytrain.config import RetryPolicy

POLICY = RetryPolicy(max_retries=2, backoff_base_s=10, backoff_cap_s=15)
S, Q, F, C = RunStatus.SUCCEEDED, RunStatus.QUEUED, RunStatus.FAILED, RunStatus.CANCELLED
T, P, M = FailureClass.TRANSIENT, FailureClass.PERMANENT, FailureClass.MACHINE

CASES = [
    # outcome            class  used cancel -> status used backoff error starts with
    (AttemptOutcome.SUCCEEDED, None, 0, False, S, 0, 0.0, None),
    (AttemptOutcome.SUCCEEDED, None, 2, True, S, 2, 0.0, None),  # finished before it saw the cancel
    (AttemptOutcome.CANCELLED, None, 1, False, C, 1, 0.0, None),
    (AttemptOutcome.PREEMPTED, None, 2, False, Q, 2, 0.0, None),  # a preemption never spends a retry
    (AttemptOutcome.PREEMPTED, None, 0, True, C, 0, 0.0, None),
    (AttemptOutcome.LOST, None, 1, False, Q, 1, 0.0, None),  # an expired lease: queued again at once
    (AttemptOutcome.LOST, None, 0, True, C, 0, 0.0, None),
    (AttemptOutcome.FAILED, P, 0, False, F, 0, 0.0, "permanent failure: boom"),
    (AttemptOutcome.FAILED, T, 0, True, C, 0, 0.0, None),
    (AttemptOutcome.FAILED, T, 0, False, Q, 1, 10.0, "transient failure (1/2 retries): boom"),
    (AttemptOutcome.FAILED, T, 1, False, Q, 2, 15.0, "transient failure (2/2 retries): boom"),  # capped backoff
    (AttemptOutcome.FAILED, T, 2, False, F, 3, 0.0, "retries exhausted (2); last error: boom"),
    # the machine's fault: queued again at once, however many retries were spent, spending none
    (AttemptOutcome.FAILED, M, 0, False, Q, 0, 0.0, "machine fault (not counted in retries): boom"),
    (AttemptOutcome.FAILED, M, 2, False, Q, 2, 0.0, "machine fault (not counted in retries): boom"),
    (AttemptOutcome.FAILED, M, 0, True, C, 0, 0.0, None),
]


@pytest.mark.parametrize(("outcome", "failure_class", "used", "cancel", "status", "used_after", "backoff", "error"),
                         CASES)
def test_next_status(outcome, failure_class, used, cancel, status, used_after, backoff, error):
    decision = next_status(outcome, failure_class, used, POLICY, cancel_requested=cancel, message="boom")
    assert (decision.status, decision.retries_used, decision.backoff_s, decision.last_error) == \
        (status, used_after, backoff, error)


def test_wire_strings_decide_the_same():
    """The store passes what the wire carries; plain strings equal the enums."""
    assert next_status("failed", "transient", 0, POLICY) == next_status(AttemptOutcome.FAILED, T, 0, POLICY)
    assert next_status("failed", None, 0, RetryPolicy(max_retries=0)).last_error.startswith("retries exhausted")
