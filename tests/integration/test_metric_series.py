"""A run's metric series across hand-offs, in the store, on SQLite and PostgreSQL alike: points
an earlier attempt reported past the step a later one resumed from are superseded (each step
shows once), downsampled reads keep the first and last point and every bucket's extremes."""

from __future__ import annotations

import math

import pytest

from relaytrain.config import parse_run_config
from relaytrain.errors import LeaseLost

SHA = "ab" * 32


def run(run_id: str, **extra) -> object:
    data = {"run_id": run_id, "kind": "command", "max_steps": 10**6, "trainer": {"command": "true"}}
    data.update(extra)
    return parse_run_config(data)


def report(store, run_id: str, worker: str, epoch: int, steps, now: float, name: str = "loss") -> None:
    store.record_progress(run_id, worker, epoch, [{"step": s, "metrics": {name: 1.0 / s}} for s in steps], now=now)


def steps_of(points, **where) -> list[tuple[int, int, bool]]:
    return [(p["step"], p["epoch"], p["superseded"]) for p in points
            if all(p[k] == v for k, v in where.items())]


def test_resume_supersedes_the_points_past_the_resume_step(store):
    store.submit_run(run("r"), now=1)
    store.claim_run("a", now=2)
    report(store, "r", "a", 1, range(1, 11), now=3)
    store.commit_checkpoint("r", "a", 1, step=5, uri="file:///c/5", manifest_sha256=SHA, now=4)
    store.claim_run("b", now=100)  # a's lease expired: b resumes from step 5
    store.record_resume("r", "b", 2, step=5, now=101)
    report(store, "r", "b", 2, range(6, 9), now=102)

    shown = store.list_metrics("r")
    assert steps_of(shown) == [(s, 1, False) for s in range(1, 6)] + [(s, 2, False) for s in range(6, 9)]
    every = store.list_metrics("r", include_superseded=True)
    assert steps_of(every, superseded=True) == [(s, 1, True) for s in range(6, 11)]
    assert len(every) == 10 + 3


def test_a_resume_from_an_older_checkpoint_supersedes_more(store):
    """The grant offers step 10; the holder finds it corrupt and resumes from scratch."""
    store.submit_run(run("r"), now=1)
    store.claim_run("a", now=2)
    report(store, "r", "a", 1, range(1, 13), now=3)
    store.commit_checkpoint("r", "a", 1, step=10, uri="file:///c/10", manifest_sha256=SHA, now=4)
    grant = store.claim_run("b", now=100)
    assert grant["checkpoint"]["step"] == 10
    assert [p["step"] for p in store.list_metrics("r")] == list(range(1, 11))  # superseded at the grant
    store.record_resume("r", "b", 2, step=0, note="step 10: corrupt", now=101)
    assert store.list_metrics("r") == []
    report(store, "r", "b", 2, range(1, 4), now=102)
    assert steps_of(store.list_metrics("r")) == [(s, 2, False) for s in range(1, 4)]
    assert len(store.list_metrics("r", include_superseded=True)) == 12 + 3


def test_three_attempts_each_step_once(store):
    store.submit_run(run("r"), now=1)
    store.claim_run("a", now=2)
    report(store, "r", "a", 1, range(1, 21), now=3)
    store.commit_checkpoint("r", "a", 1, step=15, uri="u15", manifest_sha256=SHA, now=4)
    store.claim_run("b", now=100)
    store.record_resume("r", "b", 2, step=15, now=100)
    report(store, "r", "b", 2, range(16, 26), now=101)  # dies before its next checkpoint
    store.claim_run("c", now=200)
    store.record_resume("r", "c", 3, step=15, now=200)
    report(store, "r", "c", 3, range(16, 31), now=201)
    shown = store.list_metrics("r", names=["loss"])
    assert [p["step"] for p in shown] == list(range(1, 31))
    assert {p["epoch"] for p in shown if p["step"] > 15} == {3}
    superseded = steps_of(store.list_metrics("r", include_superseded=True), superseded=True)
    assert sorted(superseded) == sorted([(s, 1, True) for s in range(16, 21)] + [(s, 2, True) for s in range(16, 26)])


def test_a_refused_resume_supersedes_nothing(store):
    store.submit_run(run("r"), now=1)
    store.claim_run("a", now=2)
    report(store, "r", "a", 1, range(1, 11), now=3)
    store.claim_run("b", now=100)  # no checkpoint: resumes from scratch; the grant supersedes all of a's
    report(store, "r", "b", 2, range(1, 4), now=101)
    before = store.list_metrics("r", include_superseded=True)
    with pytest.raises(LeaseLost):
        store.record_resume("r", "a", 1, step=0, now=102)  # the stale holder
    assert store.list_metrics("r", include_superseded=True) == before
    assert steps_of(store.list_metrics("r")) == [(s, 2, False) for s in range(1, 4)]


def test_names_and_name_filter(store):
    store.submit_run(run("r"), now=1)
    store.claim_run("a", now=2)
    store.submit_run(run("other"), now=2)
    store.record_progress("r", "a", 1, [{"step": 1, "metrics": {"loss": 2.0, "reward": 0.5, "lr": 1e-3}}], now=3)
    assert store.metric_names("r") == ["loss", "lr", "reward"]
    assert store.metric_names("other") == []
    picked = store.list_metrics("r", names=["reward", "loss"])
    assert [(p["name"], p["value"]) for p in picked] == [("loss", 2.0), ("reward", 0.5)]


def test_downsampling_keeps_first_last_and_extremes(store):
    store.submit_run(run("r"), now=1)
    store.claim_run("a", now=2)
    n = 3000
    values = {s: math.sin(s / 50) for s in range(1, n + 1)}
    values[1234], values[2345] = 50.0, -50.0  # a spike each way, which a chart must show
    for start in range(1, n + 1, 1000):
        points = [{"step": s, "metrics": {"loss": values[s], **({"short": 1.0} if s <= 80 else {})}}
                  for s in range(start, min(n, start + 999) + 1)]
        store.record_progress("r", "a", 1, points, now=3)
    for max_points in (2, 3, 100, 999):
        points = store.list_metrics("r", names=["loss"], max_points=max_points)
        steps = [p["step"] for p in points]
        assert len(points) <= max_points and steps == sorted(steps)
        assert steps[0] == 1 and steps[-1] == n
        assert all(p["value"] == values[p["step"]] for p in points)
        if max_points >= 4:
            assert {1234, 2345} <= set(steps)
    assert len(store.list_metrics("r", names=["loss"], max_points=2)) == 2
    assert len(store.list_metrics("r", names=["loss"], max_points=n)) == n  # nothing to drop
    both = store.list_metrics("r", max_points=100)
    assert len([p for p in both if p["name"] == "short"]) == 80  # each series on its own: this one whole
    assert len([p for p in both if p["name"] == "loss"]) <= 100


def test_downsampling_reads_superseded_points_only_when_asked(store):
    store.submit_run(run("r"), now=1)
    store.claim_run("a", now=2)
    report(store, "r", "a", 1, range(1, 401), now=3)
    store.commit_checkpoint("r", "a", 1, step=100, uri="u", manifest_sha256=SHA, now=4)
    store.claim_run("b", now=100)
    store.record_resume("r", "b", 2, step=100, now=100)
    report(store, "r", "b", 2, range(101, 201), now=101)
    shown = store.list_metrics("r", max_points=50)
    assert shown[-1]["step"] == 200 and not any(p["superseded"] for p in shown)
    every = store.list_metrics("r", max_points=50, include_superseded=True)
    assert every[-1]["step"] == 400 and every[-1]["superseded"]


def test_running_gauges(store):
    store.submit_run(run("r", max_steps=50), now=1)
    store.claim_run("a", now=2)
    store.submit_run(run("queued"), now=2)
    store.record_progress("r", "a", 1, [{"step": 4, "metrics": {"tokens_per_s": 10.0}}], now=6)
    store.record_progress("r", "a", 1, [{"step": 8, "metrics": {"tokens_per_s": 12.5}}], now=12)
    [gauges] = store.running_gauges(now=12)
    assert {k: gauges[k] for k in ("run_id", "status", "step", "max_steps", "epoch", "tokens_per_s")} == {
        "run_id": "r", "status": "running", "step": 8, "max_steps": 50, "epoch": 1, "tokens_per_s": 12.5}
    assert 0 < gauges["ettr"] <= 1
    store.release_lease("r", "a", 1, outcome="succeeded", now=13)
    assert store.running_gauges(now=13) == []
