"""The rollout manager's book of groups: leases with attempts, late and stale results, re-queues,
the trainer's own groups, and the state a checkpoint keeps."""

from __future__ import annotations

import json

import pytest

from relaytrain.rollout.queue import TRAINER, GroupBook, GroupRefused, ReadyGroup


def ready(group_id: int, version: int, source: str = "w1") -> ReadyGroup:
    return ReadyGroup(group_id=group_id, version=version, source=source, token_ids=[[5, 2], [7]],
                      logps=[[-0.5, -0.25], [-1.0]], finished=[True, True], rewards=[1.0, 0.0],
                      per_function={"correctness": [1.0, 0.0]})


def test_groups_go_out_lowest_first_each_lease_one_more_attempt() -> None:
    book = GroupBook(6, max_staleness=2, lease_s=10)
    assert book.lease("w1", 2, version=0, latest=0, now=0) == [(0, 1), (1, 1)]
    assert book.lease("w2", 1, version=0, latest=0, now=0) == [(2, 1)]
    assert book.drop_worker("w1") == [0, 1]
    assert book.lease("w2", 3, version=0, latest=0, now=1) == [(0, 2), (1, 2), (3, 1)]
    assert book.counters.requeued == 2


def test_a_late_result_is_refused_and_changes_nothing() -> None:
    book = GroupBook(4, max_staleness=2, lease_s=10)
    [(group, attempt)] = book.lease("w1", 1, version=0, latest=0, now=0)
    assert book.expire(now=10.5) == [0]  # the deadline passed: handed out again
    [(again, second)] = book.lease("w2", 1, version=0, latest=0, now=11)
    assert (again, second) == (0, 2)
    with pytest.raises(GroupRefused) as late:
        book.accept(ready(0, 0, "w1"), "w1", attempt)
    assert late.value.status == 409 and "no longer current" in str(late.value)
    assert book.counts() == {"pending": 3, "leased": 1, "ready": 0, "trained": 0}
    book.accept(ready(0, 0, "w2"), "w2", second)
    with pytest.raises(GroupRefused, match="already accepted"):  # a result is accepted once
        book.accept(ready(0, 0, "w2"), "w2", second)
    assert book.counts()["ready"] == 1


def test_a_worker_too_far_behind_gets_no_work_and_its_stale_result_is_refused() -> None:
    book = GroupBook(4, max_staleness=1, lease_s=10)
    with pytest.raises(GroupRefused, match="pull newer weights"):
        book.lease("w1", 1, version=3, latest=5, now=0)
    [(group, attempt)] = book.lease("w1", 1, version=4, latest=4, now=0)
    with pytest.raises(GroupRefused, match="never published"):  # a lie: refused, nothing changes
        book.check_result(group, "w1", attempt, version=7, latest=6)
    book.check_result(group, "w1", attempt, version=5, latest=6)
    with pytest.raises(GroupRefused, match="more than max_staleness=1 behind 6"):
        book.check_result(group, "w1", attempt, version=4, latest=6)
    # a stale result ends its lease: the group goes straight back out, counted as dropped, not re-queued
    assert book.counts()["pending"] == 4 and book.counters.dropped_stale == 1 and book.counters.requeued == 0
    assert book.lease("w2", 1, version=6, latest=6, now=0) == [(group, 2)]


def test_ready_groups_too_stale_to_train_are_regenerated_not_trained() -> None:
    book = GroupBook(4, max_staleness=1, lease_s=10)
    for worker in ("w1", "w2"):
        [(group, attempt)] = book.lease(worker, 1, version=0, latest=0, now=0)
        book.accept(ready(group, 0 if worker == "w1" else 1, worker), worker, attempt)
    chosen, stale = book.take_ready(4, version=2)
    assert [g.group_id for g in chosen] == [1] and [g.group_id for g in stale] == [0]
    assert book.counters.dropped_stale == 1
    assert book.lease("w3", 1, version=2, latest=2, now=0) == [(0, 2)]


def test_the_trainers_own_groups_never_expire_and_are_trained_once() -> None:
    book = GroupBook(3, max_staleness=0, lease_s=1)
    own = book.lease(TRAINER, 2, version=0, latest=None, now=0)
    assert book.expire(now=100) == []
    book.finish_own([g for g, _ in own])
    book.mark_trained([0, 1])
    with pytest.raises(RuntimeError, match="trained twice"):
        book.mark_trained([1])
    with pytest.raises(RuntimeError, match="not leased to the trainer"):
        book.finish_own([2])


def test_the_checkpointed_book_keeps_trained_and_ready_groups_and_requeues_those_in_flight() -> None:
    book = GroupBook(10, max_staleness=2, lease_s=10)
    own = book.lease(TRAINER, 3, version=0, latest=None, now=0)
    book.finish_own([g for g, _ in own])
    book.mark_trained([0, 1, 2])
    leased = book.lease("w1", 3, version=0, latest=0, now=0)  # groups 3, 4, 5
    book.accept(ready(4, 0), "w1", leased[1][1])
    state = json.loads(json.dumps(book.state_dict()))  # what the checkpoint file holds
    assert state["trained"] == [[0, 3]] and [g["group_id"] for g in state["ready"]] == [4]

    resumed = GroupBook(12, max_staleness=2, lease_s=10)  # the run was extended by a few groups
    resumed.load_state_dict(state)
    assert resumed.counts() == {"pending": 12 - 3 - 1, "leased": 0, "ready": 1, "trained": 3}
    chosen, _ = resumed.take_ready(4, version=1)
    assert chosen[0] == ready(4, 0)
    assert [g for g, _ in resumed.lease("w2", 3, version=1, latest=1, now=0)] == [3, 5, 6]
