"""The lease-safety audit the contention tests and the claims benchmark share
(tests/support/claimer.py: ``lease_violations``), on made-up grants and attempts."""

from __future__ import annotations

from tests.support.claimer import lease_violations


def attempt(run_id: str, epoch: int, granted_at: float, ended_at: float | None) -> dict:
    return {"run_id": run_id, "epoch": epoch, "granted_at": granted_at, "ended_at": ended_at}


HANDOVER = [attempt("a", 1, 0.0, 5.0), attempt("a", 2, 5.0, None), attempt("b", 1, 1.0, None)]


def test_a_clean_history_has_no_violation():
    assert lease_violations([("a", 1), ("b", 1), ("a", 2)], HANDOVER) == []


def test_each_kind_of_violation_is_named():
    assert lease_violations([("a", 1), ("a", 1), ("a", 2), ("b", 1)], HANDOVER) == [
        "a epoch 1 was answered to 2 claimers"]
    assert lease_violations([("a", 1), ("b", 1)], HANDOVER) == [
        "grants and attempts disagree: granted only [], recorded only [('a', 2)]"]
    gap = [attempt("a", 1, 0.0, 5.0), attempt("a", 3, 6.0, None)]
    assert lease_violations([("a", 1), ("a", 3)], gap) == ["a: epochs [1, 3]"]
    overlap = [attempt("a", 1, 0.0, 5.0), attempt("a", 2, 4.5, None)]
    assert lease_violations([("a", 1), ("a", 2)], overlap) == [
        "a: epoch 2 granted at 4.5 while epoch 1 held it until 5.0"]
    held = [attempt("a", 1, 0.0, None), attempt("a", 2, 4.5, None)]
    assert lease_violations([("a", 1), ("a", 2)], held) == ["a: epoch 1 never ended, yet epoch 2 was granted"]
