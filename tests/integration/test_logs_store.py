"""Central logs in the store, on SQLite and PostgreSQL alike: fenced appends, retried batches,
gaps the worker dropped, the per-attempt cap (oldest first), and reading by attempt."""

from __future__ import annotations

import pytest

from relaytrain.errors import LeaseLost, NotFound
from tests.integration.test_store import run


def chunk(seq: int, text: str, stream: str = "stdout", ts: float = 1.0) -> dict:
    return {"seq": seq, "stream": stream, "ts": ts, "text": text}


def texts(page: dict) -> list[str]:
    return [item["text"] for item in page["items"]]


def test_append_is_fenced_and_a_refusal_changes_nothing(store):
    store.submit_run(run("r"), now=0)
    store.claim_run("w1", now=1)
    store.append_logs("r", "w1", 1, [chunk(0, "one\n")], now=2)
    store.release_lease("r", "w1", 1, outcome="preempted", now=3)
    store.claim_run("w2", now=4)
    before = store.list_logs("r", attempt=1)
    for worker, epoch in (("w1", 1), ("w2", 1), ("w1", 2)):
        with pytest.raises(LeaseLost):
            store.append_logs("r", worker, epoch, [chunk(4, "late\n")], now=5)
    assert store.list_logs("r", attempt=1) == before
    assert store.list_logs("r") == {"items": [], "next": 0, "dropped": 0, "attempt": 2}
    with pytest.raises(NotFound):
        store.append_logs("ghost", "w2", 2, [chunk(0, "x")], now=5)


def test_a_batch_sent_again_is_stored_once_and_gaps_count_as_dropped(store):
    store.submit_run(run("r"), now=0)
    store.claim_run("w1", now=1)
    batch = [chunk(0, "a\n"), chunk(2, "é\n", "stderr")]  # é is 2 bytes of UTF-8
    assert store.append_logs("r", "w1", 1, batch, now=2) == {"end": 5, "dropped": 0}
    assert store.append_logs("r", "w1", 1, batch, now=3) == {"end": 5, "dropped": 0}
    assert store.append_logs("r", "w1", 1, [chunk(2, "é\n"), chunk(15, "after a gap\n")], now=4) == {
        "end": 27, "dropped": 10}
    page = store.list_logs("r", attempt=1)
    assert texts(page) == ["a\n", "é\n", "after a gap\n"]
    assert [(i["seq"], i["stream"]) for i in page["items"]] == [(0, "stdout"), (2, "stderr"), (15, "stdout")]
    assert (page["next"], page["dropped"], page["attempt"]) == (27, 10, 1)


def test_each_attempt_keeps_its_newest_max_bytes(store):
    store.submit_run(run("r", logs={"max_bytes": 10}), now=0)
    store.claim_run("w1", now=1)
    for i in range(5):  # 4 bytes each: 20 shipped, 10 allowed
        store.append_logs("r", "w1", 1, [chunk(4 * i, f"l{i}-\n")], now=2)
    page = store.list_logs("r", attempt=1)
    assert texts(page) == ["l3-\n", "l4-\n"] and page["dropped"] == 12
    one_big = store.append_logs("r", "w1", 1, [chunk(20, "x" * 30 + "\n")], now=3)
    assert one_big == {"end": 51, "dropped": 51}  # a chunk over the cap is not kept either
    assert texts(store.list_logs("r", attempt=1)) == []


def test_reading_pages_by_offset_and_attempt(store):
    store.submit_run(run("r"), now=0)
    store.claim_run("w1", now=1)
    store.append_logs("r", "w1", 1, [chunk(3 * i, f"{i:02d}\n") for i in range(10)], now=2)
    store.release_lease("r", "w1", 1, outcome="preempted", now=3)
    store.claim_run("w2", now=4)
    store.append_logs("r", "w2", 2, [chunk(0, "second attempt\n")], now=5)
    first = store.list_logs("r", attempt=1, limit=4)
    assert texts(first) == ["00\n", "01\n", "02\n", "03\n"] and first["next"] == 12
    rest = store.list_logs("r", attempt=1, after=first["next"], limit=100)
    assert texts(rest) == [f"{i:02d}\n" for i in range(4, 10)] and rest["next"] == 30
    assert store.list_logs("r", attempt=1, after=30) == {"items": [], "next": 30, "dropped": 0, "attempt": 1}
    assert texts(store.list_logs("r")) == ["second attempt\n"]
    with pytest.raises(NotFound, match="no attempt 3 \\(attempts: 1, 2\\)"):
        store.list_logs("r", attempt=3)
    store.submit_run(run("fresh"), now=6)
    assert store.list_logs("fresh") == {"items": [], "next": 0, "dropped": 0, "attempt": None}
    with pytest.raises(NotFound):
        store.list_logs("ghost")
