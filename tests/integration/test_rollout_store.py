"""The rollout pool's discovery in the store (DESIGN §11): announcements fenced by the lease's
epoch, served only while that epoch holds the run; rollout workers registered. SQLite and
PostgreSQL alike."""

from __future__ import annotations

import pytest

from relaytrain.config import parse_run_config
from relaytrain.errors import LeaseLost, NotFound

URL, SECRET = "http://10.0.0.5:4100", "s" * 32


def grpo(run_id: str, **extra) -> object:
    data = {"run_id": run_id, "kind": "grpo", "max_steps": 10, "rollout": {}}
    data.update(extra)
    return parse_run_config(data)


def tables(store) -> dict:
    """Every row of every table, to prove a refused call changed nothing."""
    from relaytrain.commander.store.schema import metadata

    with store.engine.connect() as conn:
        return {t.name: sorted(map(repr, conn.execute(t.select()).all())) for t in metadata.sorted_tables}


def announce(store, run_id: str, worker: str, epoch: int, now: float, **extra):
    return store.announce_rollout(run_id, worker, epoch, url=extra.pop("url", URL), secret=SECRET, now=now, **extra)


def test_announcement_is_served_while_its_epoch_holds_the_run(store):
    store.submit_run(grpo("r"), now=1)
    store.claim_run("w1", now=2)
    pool = [{"worker_id": "rw1", "version": 3, "groups_in_flight": 2, "tokens_per_s": 51.5, "groups_done": 9,
             "last_seen_s": 0.4}]
    got = announce(store, "r", "w1", 1, now=3, version=3, pool=pool)
    assert got == {"run_id": "r", "epoch": 1, "url": URL, "secret": SECRET, "version": 3, "pool": pool,
                   "updated_at": 3}
    assert store.rollout_endpoint("r", now=4) == got
    announce(store, "r", "w1", 1, now=5, version=4)  # an update replaces the row
    assert store.rollout_endpoint("r", now=6)["version"] == 4 and store.rollout_endpoint("r", now=6)["pool"] == []
    kinds = [e["kind"] for e in store.list_events("r")["items"]]
    assert kinds.count("rollout") == 1  # the URL once, not every pool update


def test_stale_epoch_is_refused_and_changes_nothing(store):
    store.submit_run(grpo("r"), now=1)
    store.claim_run("old", now=2)
    announce(store, "r", "old", 1, now=3)
    store.release_lease("r", "old", 1, outcome="preempted", now=4)
    store.claim_run("new", now=5)
    before = tables(store)
    with pytest.raises(LeaseLost, match="stale"):
        announce(store, "r", "old", 1, now=6, url="http://10.0.0.9:1")
    with pytest.raises(LeaseLost, match="does not hold"):  # the right epoch from the wrong worker
        announce(store, "r", "old", 2, now=6)
    with pytest.raises(NotFound, match="'ghost'"):
        announce(store, "ghost", "new", 2, now=6)
    assert tables(store) == before
    # the old epoch's row is not served to rollout workers: the new holder has not announced yet
    with pytest.raises(NotFound, match=r"run r \(epoch 2\) has not announced a rollout manager yet"):
        store.rollout_endpoint("r", now=6)
    assert store.rollout_runs(now=6) == []
    announce(store, "r", "new", 2, now=7, url="http://10.0.0.6:4100")
    assert store.rollout_endpoint("r", now=8)["url"] == "http://10.0.0.6:4100"


def test_visibility_follows_the_run(store):
    with pytest.raises(NotFound, match="no run named 'nope'"):
        store.rollout_endpoint("nope", now=1)
    store.submit_run(grpo("r", lease={"ttl_s": 60}), now=1)
    with pytest.raises(NotFound, match="run r is queued"):
        store.rollout_endpoint("r", now=2)
    store.claim_run("w1", now=2)
    with pytest.raises(NotFound, match="has not announced"):
        store.rollout_endpoint("r", now=3)
    announce(store, "r", "w1", 1, now=3)
    assert store.rollout_endpoint("r", now=61.9)["epoch"] == 1
    with pytest.raises(NotFound, match="lease of epoch 1 expired"):  # before the sweeper ran
        store.rollout_endpoint("r", now=62)
    assert store.rollout_runs(now=62) == []
    store.expire_leases(now=63)
    with pytest.raises(NotFound, match="run r is queued"):
        store.rollout_endpoint("r", now=63)
    store.claim_run("w2", now=64)
    announce(store, "r", "w2", 2, now=64)
    store.release_lease("r", "w2", 2, outcome="succeeded", now=65)
    with pytest.raises(NotFound, match="run r ended succeeded"):
        store.rollout_endpoint("r", now=66)


def test_rollout_runs_fewest_workers_first_with_their_labels(store):
    view = {"worker_id": "x"}
    specs = {"busy": (3, {}), "idle": (0, {"zone": "eu"}), "one": (1, {}), "idle-high": (0, {})}
    for i, (run_id, (_, labels)) in enumerate(specs.items()):
        extra = {"priority": 5} if run_id == "idle-high" else {}
        store.submit_run(grpo(run_id, rollout={"labels": labels}, **extra), now=i)
    store.submit_run(grpo("silent"), now=10)  # running, but no manager announced
    store.submit_run(grpo("queued"), now=20)
    for i in range(5):
        grant = store.claim_run(f"w{i}", now=30)
        if grant["run_id"] in specs:
            announce(store, grant["run_id"], f"w{i}", 1, now=31, pool=[view] * specs[grant["run_id"]][0])
    got = store.rollout_runs(now=32)
    assert [(r["run_id"], r["rollout_workers"]) for r in got] == [("idle-high", 0), ("idle", 0), ("one", 1),
                                                                  ("busy", 3)]
    assert [r["labels"] for r in got] == [{}, {"zone": "eu"}, {}, {}]
    assert {r["epoch"] for r in got} == {1}


def test_command_runs_without_rollout_config_may_announce(store):
    store.submit_run(parse_run_config({"run_id": "c", "kind": "command", "max_steps": 5,
                                       "trainer": {"command": "true"}}), now=1)
    store.claim_run("w", now=2)
    announce(store, "c", "w", 1, now=3)
    assert store.rollout_runs(now=4) == [{"run_id": "c", "epoch": 1, "labels": {}, "rollout_workers": 0}]


def test_rollout_workers_register_and_refresh(store):
    store.submit_run(grpo("r"), now=1)
    first = store.register_rollout_worker("rw1", labels={"zone": "eu"}, now=2)
    assert first == {"worker_id": "rw1", "labels": {"zone": "eu"}, "run_id": None, "registered_at": 2,
                     "last_seen": 2}
    again = store.register_rollout_worker("rw1", labels={"zone": "eu"}, run_id="r", now=5)
    assert (again["registered_at"], again["last_seen"], again["run_id"]) == (2, 5, "r")
    before = tables(store)
    with pytest.raises(NotFound, match="run_id: no run named 'ghost'"):
        store.register_rollout_worker("rw1", run_id="ghost", now=6)
    assert tables(store) == before
    store.register_rollout_worker("rw0", now=7)
    assert [w["worker_id"] for w in store.list_rollout_workers()] == ["rw0", "rw1"]
