"""The hosts store on SQLite and PostgreSQL, and the hosts endpoints: GPUs are
reserved atomically, never twice, even by racing threads of two "replicas"."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from relaytrain.commander.app import create_app
from relaytrain.commander.store import Store
from relaytrain.config import parse_run_config
from relaytrain.errors import InvalidState, NotFound

SPEC = {"address": "10.0.0.1", "port": 22, "user": "root", "key_path": "/keys/id", "known_hosts": None,
        "labels": {"region": "eu"}, "price_per_hour": 2.0, "python": "/venv/bin/python", "workdir": "relay"}
GPUS = [{"index": i, "name": "A100", "memory_total_mb": 81920, "memory_used_mb": 4, "utilization_pct": 0,
         "idle": i != 3} for i in range(4)]


@pytest.fixture
def hstore(db_url):
    s = Store(db_url)
    s.upgrade()
    yield s
    s.close()


def polled(store: Store, name: str = "box") -> dict:
    store.put_host(name, SPEC)
    store.record_poll(name, gpus=GPUS, error=None)
    return store.get_host(name)


def test_put_get_list_update_remove(hstore):
    host = hstore.put_host("box", SPEC)
    assert (host["user"], host["reachable"], host["gpus"], host["free_gpus"], host["enabled"]) == \
        ("root", None, [], [], True)
    polled(hstore)
    hstore.put_host("box", {**SPEC, "port": 2222})
    host = hstore.get_host("box")
    assert host["port"] == 2222 and host["free_gpus"] == [0, 1, 2], "an update keeps the poll"
    assert [h["name"] for h in hstore.list_hosts()] == ["box"]
    hstore.remove_host("box")
    with pytest.raises(NotFound):
        hstore.get_host("box")


def test_unreachable_then_back(hstore):
    polled(hstore)
    hstore.record_poll("box", gpus=None, error="ssh root@10.0.0.1:22: timed out")
    host = hstore.get_host("box")
    assert host["reachable"] is False and "timed out" in host["last_error"] and len(host["gpus"]) == 4
    assert not hstore.reserve_gpus("box", worker_id="w", gpus=[0]), "nothing starts on an unreachable host"
    hstore.record_poll("box", gpus=GPUS, error=None)
    assert hstore.get_host("box")["reachable"] is True and hstore.get_host("box")["last_error"] is None


def test_reserve_only_idle_unheld_gpus(hstore):
    polled(hstore)
    assert not hstore.reserve_gpus("box", worker_id="w0", gpus=[3]), "GPU 3 is busy"
    assert not hstore.reserve_gpus("box", worker_id="w0", gpus=[7]), "no GPU 7"
    assert not hstore.reserve_gpus("box", worker_id="w0", gpus=[]), "a worker holds at least one GPU"
    assert hstore.reserve_gpus("box", worker_id="w0", gpus=[0, 1], run_id="r")
    assert not hstore.reserve_gpus("box", worker_id="w1", gpus=[1, 2]), "GPU 1 is held"
    assert hstore.reserve_gpus("box", worker_id="w1", gpus=[2])
    host = hstore.get_host("box")
    assert host["free_gpus"] == [] and [(a["worker_id"], a["gpus"]) for a in host["assignments"]] == \
        [("w0", [0, 1]), ("w1", [2])]
    hstore.release_gpus("box", "w0", error="could not start")
    host = hstore.get_host("box")
    assert host["free_gpus"] == [0, 1] and host["last_error"] == "could not start"


def test_disabled_hosts_get_no_worker(hstore):
    polled(hstore)
    hstore.set_host_enabled("box", False)
    assert not hstore.reserve_gpus("box", worker_id="w", gpus=[0])
    hstore.set_host_enabled("box", True)
    assert hstore.reserve_gpus("box", worker_id="w", gpus=[0])


def test_never_twice_the_same_gpu_under_a_race(hstore, db_url):
    """16 threads over two Store objects (two replicas) all want GPUs 0 and 1: one wins."""
    polled(hstore)
    other = Store(db_url)
    barrier = threading.Barrier(16)
    wins: list[str] = []

    def grab(i: int) -> None:
        store = hstore if i % 2 else other
        barrier.wait()
        if store.reserve_gpus("box", worker_id=f"w{i}", gpus=[0, 1] if i % 3 else [1, 0]):
            wins.append(f"w{i}")

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    held = [g for a in hstore.get_host("box")["assignments"] for g in a["gpus"]]
    assert len(wins) == 1 and sorted(held) == [0, 1]


def test_poll_frees_the_gpus_of_dead_workers(hstore):
    polled(hstore)
    for worker, gpus, pid in (("w0", [0], 100), ("w1", [1], 200), ("w2", [2], None)):
        hstore.reserve_gpus("box", worker_id=worker, gpus=gpus)
        if pid:
            hstore.assign_worker("box", worker, {"pid": pid, "log_path": f"relay/{worker}/worker.log"})
    gone = hstore.record_poll("box", gpus=GPUS, error=None, checked_pids={100, 200}, alive_pids={200})
    assert [a["worker_id"] for a in gone] == ["w0"]
    host = hstore.get_host("box")
    assert [a["worker_id"] for a in host["assignments"]] == ["w1", "w2"], "w2 was not checked: kept"
    assert host["assignments"][0]["log_path"] == "relay/w1/worker.log" and host["free_gpus"] == [0]


def test_remove_refused_while_workers_live(hstore):
    polled(hstore)
    hstore.reserve_gpus("box", worker_id="w0", gpus=[0])
    with pytest.raises(InvalidState, match="runs workers started by the autoscaler"):
        hstore.remove_host("box")
    hstore.remove_host("box", force=True)
    assert hstore.list_hosts() == []


def test_gpu_demand_and_worker_activity(hstore):
    base = {"kind": "command", "max_steps": 5, "trainer": {"command": "true"}}
    now = time.time()
    hstore.submit_run(parse_run_config({**base, "run_id": "low", "resources": {"gpus": 2}}), now=now)
    hstore.submit_run(parse_run_config({**base, "run_id": "high", "priority": 5,
                                        "resources": {"labels": {"region": "eu"}}}), now=now + 1)
    hstore.submit_run(parse_run_config({**base, "run_id": "child", "init_from": {"run": "low"}}), now=now + 2)
    demand = hstore.gpu_demand(now=now + 3)
    assert [(d["run_id"], d["gpus"], d["labels"]) for d in demand] == [("high", 0, {"region": "eu"}), ("low", 2, {})]
    hstore.register_worker("w-idle", provider="ssh", hostname=None, version=None, resources={})
    hstore.register_worker("w-busy", provider="ssh", hostname=None, version=None, resources={"gpus": []})
    hstore.claim_run("w-busy", gpus=2)
    assert hstore.worker_activity(["w-idle", "w-busy", "w-new"]) == {"w-idle": "idle", "w-busy": "busy",
                                                                    "w-new": "absent"}


# -- the endpoints -----------------------------------------------------------------------------


@pytest.fixture
def api(tmp_path):
    store = Store(str(tmp_path / "relay.db"))
    store.upgrade()
    app = create_app(store, admin_token="admin")
    with TestClient(app) as client:
        client.store = store
        yield client
    store.close()


def test_endpoints(api):
    hdr = {"Authorization": "Bearer admin"}
    assert api.get("/api/v1/hosts").status_code == 401
    worker_token = api.post("/api/v1/tokens", json={"name": "w", "scope": "worker"}, headers=hdr).json()["token"]
    assert api.get("/api/v1/hosts", headers={"Authorization": f"Bearer {worker_token}"}).status_code == 403
    body = {k: v for k, v in SPEC.items() if k != "known_hosts"}
    put = api.put("/api/v1/hosts/box-1", json=body, headers=hdr)
    assert put.status_code == 200, put.text
    assert put.json()["name"] == "box-1" and put.json()["workers"] == [] and put.json()["reachable"] is None
    api.store.record_poll("box-1", gpus=GPUS, error=None)
    api.store.reserve_gpus("box-1", worker_id="w0", gpus=[0])
    listed = api.get("/api/v1/hosts", headers=hdr).json()
    assert listed[0]["free_gpus"] == [1, 2] and listed[0]["workers"][0]["worker_id"] == "w0"
    assert listed[0]["gpus"][3]["idle"] is False
    assert api.patch("/api/v1/hosts/box-1", json={"enabled": False}, headers=hdr).json()["enabled"] is False
    refused = api.delete("/api/v1/hosts/box-1", headers=hdr)
    assert refused.status_code == 409 and "autoscaler" in refused.json()["detail"]
    assert api.delete("/api/v1/hosts/box-1", params={"force": "true"}, headers=hdr).json()["removed"] is True
    assert api.get("/api/v1/hosts/box-1", headers=hdr).status_code == 404
    bad = api.put("/api/v1/hosts/bad name", json=body, headers=hdr)
    assert bad.status_code == 422
    bad = api.put("/api/v1/hosts/box", json={**body, "port": 0}, headers=hdr)
    assert bad.status_code == 422 and "port" in bad.json()["detail"]
