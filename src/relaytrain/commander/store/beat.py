"""The commander's beat: leases are not expired for the commander's own outage.

A worker that cannot reach the commander pauses its trainer and keeps its lease in jeopardy
(``relaytrain.worker.lease``); while the commander (every replica) or its database is down, no
renewal can land, so each such lease would be past its deadline when the commander comes back.
Every replica's sweeper therefore writes the one row of ``commander_beat`` (``last_alive_at``)
every sweep interval, in the transaction that expires leases. A silence longer than
:func:`stale_after` since that beat is an outage: before anything is expired or refused for
expiry, every running lease that was still live when the beat stopped (``expires_at >
last_alive_at``) is extended by the silence, so its holder, paused meanwhile, has as long left
as it had when the commander went away. A lease that had already expired before the outage is
not extended. Any live replica keeps the beat fresh, so the loss of one of several replicas
extends nothing; and a worker cut off from a commander that is up (a partition) gets no
extension: its lease expires and its renewal is refused.

Outages shorter than :func:`stale_after` are not extended: keep ``ttl_s − margin_s`` above it
(the defaults, 45 s against 12 s, do).
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

from relaytrain.api.status import RunStatus

from . import events
from .schema import commander_beat, runs

log = logging.getLogger(__name__)

SLACK_S = 2.0
"""What a slow sweep (a long transaction, a pause of the process) may add to its interval."""

_ROW = commander_beat.c.id == 1
_READ = sa.select(commander_beat.c.last_alive_at, commander_beat.c.stale_after_s).where(_ROW)
_LOCK = _READ.with_for_update()
_BEAT = (commander_beat.update().where(_ROW)
         .values(last_alive_at=sa.bindparam("b_now"), stale_after_s=sa.bindparam("b_stale_after_s")))
_INTERRUPTED = (
    sa.select(runs.c.run_id, runs.c.epoch, runs.c.holder)
    .where(runs.c.status == RunStatus.RUNNING, runs.c.lease_expires_at > sa.bindparam("since"))
    .order_by(runs.c.run_id)
    .with_for_update()
)


def stale_after(sweep_interval_s: float) -> float:
    """How long after the last beat the commander counts as having been down: two sweeps
    missed, and a slow one's slack. The one rule; the sweeper stores it with each beat."""
    return 2 * sweep_interval_s + SLACK_S


def outage(conn: sa.Connection, now: float) -> float | None:
    """Seconds since the last beat, if that silence is an outage; None if not (or no beat yet).
    A plain read: cheap enough for every claim."""
    return _silence(conn.execute(_READ).first(), now)


def _silence(row: sa.Row | None, now: float) -> float | None:
    if row is None or row.last_alive_at is None:
        return None
    silence = now - row.last_alive_at
    return silence if silence > row.stale_after_s else None


def recover(conn: sa.Connection, now: float) -> float:
    """After an outage, extend every lease it interrupted by its length, with an event per run,
    and beat. Returns the extension in seconds (0: there was no outage to recover from).

    The beat's row is locked before any run's, so concurrent replicas recover once: the second
    finds the beat fresh under the lock. Run first, in any transaction that expires leases."""
    if outage(conn, now) is None:
        return 0.0
    row = conn.execute(_LOCK).first()
    silence = _silence(row, now)
    if silence is None:  # another replica recovered meanwhile
        return 0.0
    interrupted = conn.execute(_INTERRUPTED, {"since": row.last_alive_at}).all()
    if interrupted:
        conn.execute(runs.update().where(runs.c.run_id.in_([r.run_id for r in interrupted]))
                     .values(lease_expires_at=runs.c.lease_expires_at + silence, updated_at=now))
    for r in interrupted:
        events.add(conn, r.run_id, "lease_extended",
                   f"lease epoch {r.epoch} of {r.holder} extended by {silence:.1f}s: the commander was down",
                   {"epoch": r.epoch, "worker_id": r.holder, "extended_s": silence}, now)
    conn.execute(_BEAT, {"b_now": now, "b_stale_after_s": row.stale_after_s})
    log.warning("the commander was down for %.1fs: %d running lease(s) extended by as much", silence,
                len(interrupted))
    return silence


def beat(conn: sa.Connection, now: float, stale_after_s: float) -> None:
    """Record that this replica is alive with its database at ``now``."""
    if conn.execute(_BEAT, {"b_now": now, "b_stale_after_s": stale_after_s}).rowcount == 0:
        conn.execute(commander_beat.insert().values(id=1, last_alive_at=now, stale_after_s=stale_after_s))
