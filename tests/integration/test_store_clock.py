"""Whose clock dates a lease: on PostgreSQL the database's, so replicas whose clocks disagree
still agree on every deadline; on SQLite (one commander, one machine) the process's."""

from __future__ import annotations

import time

import pytest

from relaytrain.commander.store import Store
from relaytrain.commander.store.clock import CLOCK_OFFSET_ENV
from relaytrain.config import parse_run_config
from relaytrain.errors import ConfigError

TTL_S, MARGIN_S = 30.0, 19.0
AHEAD_S = 2 * MARGIN_S
"""The wrong replica's clock runs this far ahead: more than the whole ttl, so a replica dating
leases by its own clock finds every lease expired the moment it is granted."""


def run(run_id: str) -> object:
    return parse_run_config({"run_id": run_id, "kind": "command", "max_steps": 100, "trainer": {"command": "true"},
                             "lease": {"ttl_s": TTL_S, "margin_s": MARGIN_S, "grace_s": 1}})


def _store(url: str, monkeypatch, offset_s: float = 0.0) -> Store:
    monkeypatch.setenv(CLOCK_OFFSET_ENV, str(offset_s))
    store = Store(url)
    monkeypatch.delenv(CLOCK_OFFSET_ENV)
    return store


@pytest.mark.postgres
def test_a_replica_whose_clock_runs_ahead_grants_nothing_early(pg_url, monkeypatch):
    right = _store(pg_url, monkeypatch)
    right.upgrade()
    ahead = _store(pg_url, monkeypatch, offset_s=AHEAD_S)
    try:
        right.submit_run(run("held"))
        grant = right.claim_run("holder")
        assert grant["run_id"] == "held"

        # Through the replica whose clock is ahead: the lease is live, renewable, and not for anyone else.
        assert ahead.expire_leases() == 0
        assert ahead.claim_run("poacher") is None
        renewed = ahead.renew_lease("held", "holder", 1)
        assert renewed["expires_at"] < grant["expires_at"] + AHEAD_S
        assert ahead.record_progress("held", "holder", 1, [{"step": 5, "metrics": {"loss": 1.0}}]) == 5
        detail = right.get_run("held")
        assert (detail["status"], detail["holder"], detail["epoch"]) == ("running", "holder", 1)
        assert [a["outcome"] for a in detail["attempts"]] == [None]

        # Both replicas date what they write by one clock: the database's.
        for store in (right, ahead):
            with store.engine.connect() as conn:
                assert abs(store.clock.now(conn) - right.clock.now(conn)) < MARGIN_S
    finally:
        ahead.close()
        right.close()


def _waiting_for_locks(store: Store) -> int:
    """Sessions of this database waiting for a lock now (a transaction of its own: the view is a snapshot)."""
    import sqlalchemy as sa

    with store.engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                    "AND datname = current_database()")).scalar_one()


@pytest.mark.postgres
def test_a_renewal_that_waits_for_its_run_is_dated_after_the_wait(pg_url, monkeypatch):
    """Another transaction holds the run's row lock and lets go without changing it; the renewal
    waiting for it is dated once it has the lock (dated at the transaction's start, or by the
    locking statement's own target list, it would be dated before the wait)."""
    import threading

    import sqlalchemy as sa

    from relaytrain.commander.store.schema import runs
    from tests.support.commander import wait_until

    store = _store(pg_url, monkeypatch)
    store.upgrade()
    try:
        store.submit_run(run("r"))
        store.claim_run("w")
        renewed: dict = {}
        with store.engine.connect() as holder:
            with holder.begin():
                holder.execute(sa.select(runs.c.run_id).where(runs.c.run_id == "r").with_for_update())
                renewal = threading.Thread(target=lambda: renewed.update(store.renew_lease("r", "w", 1)))
                renewal.start()
                wait_until(lambda: _waiting_for_locks(store) > 0, 30, "the renewal to wait for the lock")
                released_at = store.clock.now(holder)
            renewal.join(30)
        assert renewed["expires_at"] >= released_at + TTL_S
    finally:
        store.close()


def test_the_process_clock_dates_sqlite_leases_and_explicit_now_wins(db_url, monkeypatch):
    store = _store(db_url, monkeypatch, offset_s=1000.0)
    store.upgrade()
    try:
        store.submit_run(run("r"))
        before = time.time()
        expires_at = store.claim_run("w")["expires_at"]
        after = time.time()
        offset = 1000.0 if store.dialect == "sqlite" else 0.0  # PostgreSQL: its own clock, whatever ours says
        assert before + offset + TTL_S - 5 <= expires_at <= after + offset + TTL_S + 5
        assert store.renew_lease("r", "w", 1, now=expires_at - 1)["expires_at"] == expires_at - 1 + TTL_S
    finally:
        store.close()


@pytest.mark.parametrize("value", ["soon", "nan", "inf"])
def test_a_bad_clock_offset_is_refused_naming_it(value, monkeypatch, tmp_path):
    monkeypatch.setenv(CLOCK_OFFSET_ENV, value)
    with pytest.raises(ConfigError, match=CLOCK_OFFSET_ENV):
        Store(str(tmp_path / "relay.db"))
    assert not (tmp_path / "relay.db").exists()
