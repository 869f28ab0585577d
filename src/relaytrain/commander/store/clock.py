"""Which clock a store's ``now`` comes from (DESIGN §4, the lease arithmetic).

Replicas of the commander share one PostgreSQL database but not one clock. If each dated leases
by its own ``time.time()``, a replica whose clock ran ahead by more than the margin would find a
live lease expired and grant the run to a second worker. So on PostgreSQL every ``now`` the store
uses (grants, renewals, the fence, expiries, the events and attempts they write) is the database
server's clock, read on the transaction's own connection: one clock for every replica, whatever
theirs say. SQLite is one file on one machine behind one commander: its process clock is the only
clock there is, read once the transaction holds the write lock.

Which PostgreSQL function, and when: ``clock_timestamp()``, the time when it is evaluated, read
after the locks a call waits for. ``now()`` is the transaction's start and ``statement_timestamp()``
the statement's: both date a call before a lock wait inside it, and a lease granted or renewed
after a wait must not be dated before it. Even ``clock_timestamp()`` in the target list of a
``SELECT … FOR UPDATE`` is evaluated before the row lock is waited for (when the holder releases
the row without changing it), so the fence reads it in an outer query over the locking one
(:func:`.leases.fenced_run`): every fenced call (renewal, progress, checkpoint, release, logs,
rollout announcement) is dated in the same round trip that locks its run, after the lock is
held. Other writes (claims, the sweeper, submissions) read it by a statement of their own at
the start of their transaction; a claim takes its row with ``SKIP LOCKED`` and never waits.

A test can set the process clock ahead or behind by :data:`CLOCK_OFFSET_ENV` seconds, read here
and nowhere else, to start a real replica whose clock is wrong.
"""

from __future__ import annotations

import math
import os
import time

import sqlalchemy as sa

from relaytrain.errors import ConfigError

CLOCK_OFFSET_ENV = "RELAY_CLOCK_OFFSET_S"
"""Test only: seconds added to this process's clock (``relay serve`` with a clock that is wrong)."""

DATABASE_NOW = sa.literal_column("extract(epoch FROM clock_timestamp())::float8")
"""PostgreSQL's clock, seconds since the epoch, when the expression is evaluated."""
_SELECT_NOW = sa.select(DATABASE_NOW)


def process_offset() -> float:
    """The offset :data:`CLOCK_OFFSET_ENV` asks for (0 when unset); ConfigError naming it when not a number."""
    raw = os.environ.get(CLOCK_OFFSET_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        offset = float(raw)
    except ValueError:
        offset = math.nan
    if not math.isfinite(offset):
        raise ConfigError(f"{CLOCK_OFFSET_ENV}: expected a number of seconds, got {raw!r}")
    return offset


class Clock:
    """``now`` for a store of ``dialect``: the database's clock on PostgreSQL, else the process's."""

    def __init__(self, dialect: str) -> None:
        self.from_database = dialect == "postgresql"
        self.offset = process_offset()

    def now(self, conn: sa.Connection, now: float | None = None) -> float:
        """``now`` if given (tests), else the time on ``conn`` (inside its transaction)."""
        if now is not None:
            return now
        if self.from_database:
            return conn.execute(_SELECT_NOW).scalar_one()
        return time.time() + self.offset

    def for_fence(self, now: float | None = None) -> float | None:
        """``now`` for a fenced call (inside its transaction): None on PostgreSQL, where the fence
        reads the database's clock in its own statement, once the run's row is locked."""
        if now is not None or self.from_database:
            return now
        return time.time() + self.offset
