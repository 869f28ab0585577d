"""The words of a run's life, shared by the commander, the worker, the CLI and the API: each a
``StrEnum`` whose values are what the wire and the database carry."""

from __future__ import annotations

from enum import StrEnum

from relaytrain.contract.exits import FailureClass

__all__ = ["TERMINAL", "UNSCHEDULABLE", "AttemptOutcome", "FailureClass", "LogStream", "RunStatus", "WorkerCondition",
           "WorkerRole"]


class RunStatus(StrEnum):
    """Where a run is (DESIGN §4)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """An ended run: it is never granted again unless ``relay resume`` re-opens it."""
        return self in TERMINAL


TERMINAL: frozenset[RunStatus] = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})
"""The statuses a run ends in."""


UNSCHEDULABLE = "unschedulable"
"""How a queued run that no live worker or host can ever take is shown (its ``unschedulable`` field
says why). Not a :class:`RunStatus`: the run stays queued, and is granted as soon as one fits.
After :data:`relaytrain.UNSCHEDULABLE_AFTER_S` by default."""


class AttemptOutcome(StrEnum):
    """How an attempt (one lease) ended, as released (``failed`` with a :class:`FailureClass`, the
    contract's) or expired. Not :class:`relaytrain.contract.Outcome`: how a trainer process ended."""

    SUCCEEDED = "succeeded"
    PREEMPTED = "preempted"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"
    """The lease expired: the commander records it; a worker never reports it."""


class WorkerRole(StrEnum):
    """What a worker started by ``launch-stack`` or the SSH autoscaler does (its ``role`` in the
    stack's state and in a host's assignments)."""

    WORKER = "worker"
    """``relay worker``: claims and trains runs."""
    ROLLOUT = "rollout-worker"
    """``relay rollout-worker``: generates for runs' rollout managers."""


class WorkerCondition(StrEnum):
    """What a worker says of its machine (``relay worker`` heartbeats it; ``relay status`` shows it)."""

    OK = "ok"
    DEGRADED = "degraded"
    """A machine fault stayed after the worker freed what it could (a full disk, a failed GPU): the
    worker claims nothing until the fault is gone, and keeps heartbeating with the reason."""


class LogStream(StrEnum):
    """Which of the trainer's outputs a shipped log chunk comes from."""

    STDOUT = "stdout"
    STDERR = "stderr"
