"""Which clock a store's ``now`` comes from (DESIGN §4, the lease arithmetic).

Replicas of the commander share one PostgreSQL database but not one clock. If each dated leases
by its own ``time.time()``, a replica whose clock ran ahead by more than the margin would find a
live lease expired and grant the run to a second worker. So on PostgreSQL every ``now`` the store
uses (grants, renewals, the fence, expiries, the events and attempts they write) is the database
server's clock, read on the transaction's own connection: one clock for every replica, whatever
theirs say. SQLite is one file on one machine behind one commander: its process clock is the only
clock there is, read once the transaction holds the write lock.

Which PostgreSQL function: ``clock_timestamp()``, the time when it is evaluated. ``now()`` (the
transaction's start) and ``statement_timestamp()`` (the statement's arrival) both date what a
statement does before any lock wait inside it. The time is read by its own statement at the start
of the transaction, so a write transaction is dated after it began; the one lock a write then waits
on is the run row taken by the fence (``FOR UPDATE``). A renewal dated before that wait sets a
deadline a little *earlier* than one dated after it: the safe side, since the worker's own
deadline runs from when it *sent* the request, earlier still. Grants take their row with ``SKIP
LOCKED`` and never wait.

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

_DB_NOW = sa.text("SELECT extract(epoch FROM clock_timestamp())::float8")


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
            return conn.execute(_DB_NOW).scalar_one()
        return time.time() + self.offset
