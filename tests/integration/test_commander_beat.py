"""The commander's beat (commander/store/beat.py): an outage of the commander extends the leases
it interrupted, once, by its length; a partition of one worker, a short silence or the loss of one
replica extends nothing. On SQLite and PostgreSQL, with the clock injected."""

from __future__ import annotations

import pytest

from relaytrain.config import parse_run_config
from relaytrain.errors import CommanderRecovering, LeaseLost
from tests.integration.test_store import snapshot

STALE_AFTER = 12.0  # stale_after(5.0): a sweeper every 5 s


def run(run_id: str) -> object:
    return parse_run_config({"run_id": run_id, "kind": "command", "max_steps": 100, "trainer": {"command": "true"}})


def held(store, *run_ids: str, now: float) -> None:
    for run_id in run_ids:
        store.submit_run(run(run_id), now=now - 1)
        assert store.claim_run(f"w-{run_id}", now=now)["run_id"] == run_id


def expires_at(store, run_id: str) -> float:
    return store.get_run(run_id)["lease_expires_at"]


def extended_events(store, run_id: str) -> list[dict]:
    return [e for e in store.list_events(run_id)["items"] if e["kind"] == "lease_extended"]


def test_the_rule_is_two_sweeps_and_a_slack():
    from relaytrain.commander.store import stale_after

    assert stale_after(5.0) == STALE_AFTER


def test_an_outage_extends_every_interrupted_lease_once_by_its_length(store):
    held(store, "a", "b", now=100)  # ttl 60: both expire at 160
    store.sweep(stale_after_s=STALE_AFTER, now=100)
    store.sweep(stale_after_s=STALE_AFTER, now=105)
    assert [expires_at(store, r) for r in "ab"] == [160, 160]
    # Every replica down from just after 105 until 200: nothing renewed, nothing swept.
    assert store.sweep(stale_after_s=STALE_AFTER, now=200) == 0
    assert [expires_at(store, r) for r in "ab"] == [255, 255]
    for run_id in "ab":
        (event,) = extended_events(store, run_id)
        assert event["data"]["extended_s"] == 95 and "commander was down" in event["message"]
    assert store.renew_lease("a", "w-a", 1, now=201)["expires_at"] == 261
    store.sweep(stale_after_s=STALE_AFTER, now=202)  # the beat is fresh again: no second extension
    assert expires_at(store, "b") == 255 and len(extended_events(store, "b")) == 1
    assert [a["epoch"] for a in store.get_run("b")["attempts"]] == [1]


def test_a_short_silence_is_not_an_outage(store):
    held(store, "a", now=100)
    store.sweep(stale_after_s=STALE_AFTER, now=100)
    store.sweep(stale_after_s=STALE_AFTER, now=100 + STALE_AFTER)
    assert expires_at(store, "a") == 160 and extended_events(store, "a") == []


def test_a_partitioned_holder_is_not_extended_and_is_refused(store):
    """The commander is up (its sweeper beats): a holder that cannot reach it loses its lease."""
    held(store, "a", now=100)
    for now in range(100, 170, 5):
        store.sweep(stale_after_s=STALE_AFTER, now=now)
    assert store.get_run("a")["status"] == "queued" and extended_events(store, "a") == []
    with pytest.raises(LeaseLost):
        store.renew_lease("a", "w-a", 1, now=171)


def test_a_renewal_before_the_recovery_is_asked_to_retry_and_changes_nothing(store):
    """Back from an outage, a renewal that reaches a replica before any sweep or claim has extended
    the leases is not refused for an expiry the outage caused: it is asked to retry (503)."""
    held(store, "a", now=100)
    store.sweep(stale_after_s=STALE_AFTER, now=100)
    before = snapshot(store)
    with pytest.raises(CommanderRecovering):
        store.renew_lease("a", "w-a", 1, now=300)
    assert snapshot(store) == before
    # A claim recovers (lazily, as it expires): the lease is extended, not expired and granted again.
    store.submit_run(run("other"), now=300)
    assert store.claim_run("w-other", now=301)["run_id"] == "other"
    assert store.renew_lease("a", "w-a", 1, now=302)["expires_at"] == 362
    assert extended_events(store, "a")[0]["data"]["extended_s"] == 201


def test_a_lease_that_ended_before_the_outage_is_not_extended(store):
    held(store, "a", "b", now=100)
    store.sweep(stale_after_s=STALE_AFTER, now=100)
    store.release_lease("b", "w-b", 1, outcome="preempted", now=101)
    store.sweep(stale_after_s=STALE_AFTER, now=500)
    assert store.get_run("b")["status"] == "queued" and extended_events(store, "b") == []
    assert expires_at(store, "a") == 560


def test_without_a_beat_nothing_is_extended(store):
    """A database no sweeper has beaten in (the tests of the store, a fresh commander) expires as before."""
    held(store, "a", now=100)
    assert store.expire_leases(now=500) == 1
    assert extended_events(store, "a") == []
