"""Runs nobody can take: a queued run that no live worker or SSH host can serve (GPUs, labels,
kinds) is shown ``unschedulable`` with the reason after the grace, and is granted at once when a
worker that fits registers. On SQLite and PostgreSQL; then over HTTP and the CLI."""

from __future__ import annotations

import pytest

from relaytrain.api import models as m
from relaytrain.api.status import UNSCHEDULABLE
from relaytrain.config import parse_run_config
from tests.integration.test_cli import relay
from tests.support.commander import Commander, wait_until

GRACE = 60.0
GPU = {"index": 0, "name": "A100", "memory_mb": 81920}
POLLED_GPU = {"index": 0, "name": "A100", "memory_total_mb": 81920, "memory_used_mb": 4, "utilization_pct": 0,
              "idle": True}
HOST = {"address": "10.0.0.1", "port": 22, "user": "root", "key_path": "/keys/id", "known_hosts": None,
        "labels": {"zone": "us"}, "price_per_hour": 2.0, "python": "/venv/bin/python", "workdir": "relay"}


def run(run_id: str, *, gpus: int = 0, labels: dict | None = None, kind: str = "command"):
    data = {"run_id": run_id, "kind": kind, "max_steps": 10, "resources": {"gpus": gpus, "labels": labels or {}}}
    data["trainer"] = {"command": "true"} if kind == "command" else {}
    return parse_run_config(data)


def worker(store, worker_id: str, *, gpus: int, labels: dict | None = None, kinds: list[str] | None = None,
           now: float) -> None:
    resources = {"gpus": [{**GPU, "index": i} for i in range(gpus)], "labels": labels or {}}
    store.register_worker(worker_id, provider="local", hostname=None, version=None, resources=resources,
                          kinds=kinds, now=now)


def shown(store, now: float) -> dict[str, str | None]:
    """run → its ``unschedulable`` reason, in the list and in each run's detail alike."""
    listed = {r["run_id"]: r["unschedulable"]
              for r in store.list_runs(unschedulable_after_s=GRACE, now=now)["items"]}
    detailed = {run_id: store.get_run(run_id, unschedulable_after_s=GRACE, now=now)["unschedulable"]
                for run_id in listed}
    assert listed == detailed
    return listed


def test_gpus_labels_and_kinds_nobody_has_are_named_after_the_grace(store):
    worker(store, "small", gpus=1, labels={"zone": "us"}, now=0)
    worker(store, "cpu-sft", gpus=0, kinds=["sft"], now=0)
    store.submit_run(run("big", gpus=4), now=0)
    store.submit_run(run("eu", labels={"zone": "eu"}), now=0)
    store.submit_run(run("fits", gpus=1, labels={"zone": "us"}), now=0)
    store.submit_run(run("sft", kind="sft"), now=0)
    assert set(shown(store, now=GRACE - 1).values()) == {None}  # within the grace it simply waits
    assert shown(store, now=GRACE) == {
        "big": "needs 4 GPUs; the largest worker has 1",
        "eu": "needs label zone=eu; no worker has it",
        "fits": None,
        "sft": None,  # "cpu-sft" serves it (and "small" serves every kind)
    }
    assert store.claim_run("small", gpus=1, labels={"zone": "us"}, now=GRACE + 1)["run_id"] == "fits"


def test_each_need_met_somewhere_but_never_together(store):
    worker(store, "big-us", gpus=4, labels={"zone": "us"}, now=0)
    worker(store, "small-eu", gpus=1, labels={"zone": "eu"}, kinds=["sft"], now=0)
    store.submit_run(run("big-eu", gpus=4, labels={"zone": "eu"}), now=0)
    assert shown(store, now=GRACE)["big-eu"] == ("no single worker offers all of: 4 GPUs, label zone=eu, "
                                                 "kind command")


def test_a_kind_no_worker_serves(store):
    worker(store, "sft-only", gpus=2, kinds=["sft"], now=0)
    store.submit_run(run("cmd"), now=0)
    assert shown(store, now=GRACE)["cmd"] == "a command run; no worker serves command runs"
    assert store.claim_run("sft-only", gpus=2, kinds=["sft"], now=GRACE) is None


def test_dead_workers_do_not_count_and_a_new_one_is_granted_at_once(store):
    worker(store, "gone", gpus=8, now=0)
    store.submit_run(run("big", gpus=4), now=0)
    assert shown(store, now=GRACE)["big"] is None  # "gone" is alive at GRACE
    later = 1000.0  # "gone" has not heartbeated since 0
    assert shown(store, now=later)["big"] == "no live worker or usable SSH host is registered"
    worker(store, "small", gpus=1, now=later)
    assert shown(store, now=later)["big"] == "needs 4 GPUs; the largest worker has 1"
    worker(store, "large", gpus=4, now=later + 1)
    assert shown(store, now=later + 1)["big"] is None
    grant = store.claim_run("large", gpus=4, now=later + 1)
    assert grant["run_id"] == "big"
    assert shown(store, now=later + 2)["big"] is None  # running: never unschedulable


def test_a_degraded_worker_does_not_count(store):
    worker(store, "sick", gpus=8, now=0)
    worker(store, "small", gpus=1, now=0)
    store.submit_run(run("big", gpus=4), now=0)
    store.heartbeat("sick", health={"condition": "degraded", "reason": "disk full"}, now=1)
    assert shown(store, now=GRACE)["big"] == "needs 4 GPUs; the largest worker has 1"
    store.heartbeat("sick", health={"condition": "ok", "reason": None}, now=2)
    assert shown(store, now=GRACE)["big"] is None


def test_grace_counts_from_when_the_run_was_queued_again(store):
    worker(store, "w", gpus=4, now=0)
    store.submit_run(run("big", gpus=4), now=0)
    grant = store.claim_run("w", gpus=4, now=1)
    store.release_lease("big", "w", grant["epoch"], outcome="preempted", now=50)
    store.heartbeat("w", resources={"gpus": [GPU], "labels": {}}, now=50)  # now offers 1 GPU only
    assert shown(store, now=50 + GRACE - 1)["big"] is None
    assert shown(store, now=50 + GRACE)["big"] == "needs 4 GPUs; the largest worker has 1"


def test_enabled_reachable_hosts_count_with_all_their_gpus(store):
    worker(store, "small", gpus=1, now=0)
    store.submit_run(run("big", gpus=4, labels={"zone": "us"}), now=0)
    store.submit_run(run("huge", gpus=16), now=0)
    store.put_host("box", HOST, now=0)
    assert shown(store, now=GRACE)["big"] == "needs 4 GPUs; the largest worker has 1; needs label zone=us; " \
                                             "no worker has it"  # never polled: it may not exist
    store.record_poll("box", gpus=[{**POLLED_GPU, "index": i} for i in range(8)], error=None, now=1)
    assert shown(store, now=GRACE) == {"big": None, "huge": "needs 16 GPUs; the largest worker or host has 8"}
    store.set_host_enabled("box", False, now=2)
    assert shown(store, now=GRACE)["big"] is not None
    store.set_host_enabled("box", True, now=3)
    store.record_poll("box", gpus=None, error="ssh: timed out", now=4)
    assert shown(store, now=GRACE)["big"] is not None


def test_ended_runs_and_no_grace_show_nothing(store):
    store.submit_run(run("big", gpus=4), now=0)
    store.cancel_run("big", now=1)
    store.submit_run(run("other", gpus=4), now=0)
    assert shown(store, now=10 * GRACE) == {"big": None, "other": "no live worker or usable SSH host is registered"}
    assert store.list_runs(now=10 * GRACE)["items"][0]["unschedulable"] is None  # not asked for


class GraceCommander(Commander):
    """``relay serve`` with a short unschedulable grace."""

    def command(self) -> list[str]:
        return [*super().command(), "--unschedulable-after", "1"]


@pytest.mark.parametrize("db_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
                         indirect=True)
def test_api_and_cli_show_it_and_a_big_enough_worker_gets_it(db_url, tmp_path):
    commander = GraceCommander(db=db_url, token="test-admin-token", workdir=tmp_path).start()
    try:
        with commander.client() as api:
            api.register(m.RegisterWorker(worker_id="small", resources=m.WorkerResources(gpus=[m.GpuInfo(**GPU)])))
            api.submit({"run_id": "big", "kind": "command", "max_steps": 10, "trainer": {"command": "true"},
                        "resources": {"gpus": 4}})
            reason = "needs 4 GPUs; the largest worker has 1"
            wait_until(lambda: api.run("big").unschedulable == reason, 30, "big to be shown unschedulable")
            assert api.run("big").status == "queued"
            assert [r.unschedulable for r in api.runs().items] == [reason]
            listed = relay("runs", commander=commander).stdout
            assert UNSCHEDULABLE in listed and f"big is unschedulable: {reason}" in listed
            status = relay("status", "big", commander=commander).stdout
            assert UNSCHEDULABLE in status and reason in status
            four = [m.GpuInfo(**{**GPU, "index": i}) for i in range(4)]
            api.register(m.RegisterWorker(worker_id="large", resources=m.WorkerResources(gpus=four)))
            assert api.run("big").unschedulable is None
            grant = api.claim(m.ClaimRequest(worker_id="large", resources=m.WorkerResources(gpus=four), wait_s=0))
            assert grant is not None and grant.run_id == "big"
            assert "unschedulable" not in relay("runs", commander=commander).stdout
    finally:
        commander.stop()
