"""The rollout pool's discovery over HTTP, on a real commander (DESIGN §11): who may call what
(a rollout token reaches the rollout endpoints and nothing else), fencing, bad input."""

from __future__ import annotations

import httpx
import pytest

from relaytrain.api import models as m
from relaytrain.api.rollout import RegisterRolloutWorker, RolloutAnnounce, RolloutRun, RolloutWorkerView
from relaytrain.errors import Forbidden, LeaseLost, NotFound, RequestInvalid
from tests.integration.test_api import table_snapshot

RUN = {"run_id": "rl", "kind": "grpo", "max_steps": 5, "rollout": {"labels": {"zone": "eu"}}}
URL, SECRET = "http://127.0.0.1:4100", "k" * 24

ROLLOUT_ROUTES = {("GET", "/api/v1/runs/{run_id}/rollout"), ("GET", "/api/v1/rollout/runs"),
                  ("PUT", "/api/v1/rollout/workers/{worker_id}")}
"""Every route a rollout token may call."""
PATH_VALUES = {"run_id": "rl", "worker_id": "rw1", "name": "host1", "token_id": "1"}


def announce(worker_id: str, epoch: int, **extra) -> RolloutAnnounce:
    return RolloutAnnounce(worker_id=worker_id, epoch=epoch, url=extra.pop("url", URL), secret=SECRET, **extra)


def test_a_rollout_token_reaches_the_rollout_endpoints_and_nothing_else(commander):
    with commander.client() as admin:
        rollout_token = admin.create_token("rollout-1", "rollout").token
        worker_token = admin.create_token("worker-1", "worker").token
        admin.submit(RUN)
        document = httpx.get(f"{commander.url}/openapi.json", headers={"Authorization": f"Bearer {commander.token}"})
    assert rollout_token.startswith("relay_r_")
    routes = {(method.upper(), path) for path, ops in document.json()["paths"].items() for method in ops}
    assert ROLLOUT_ROUTES <= routes
    refused = []
    with httpx.Client(base_url=commander.url, headers={"Authorization": f"Bearer {rollout_token}"}) as http:
        for method, path in sorted(routes - ROLLOUT_ROUTES - {("GET", "/api/v1/health")}):
            answer = http.request(method, path.format(**PATH_VALUES), json={})
            assert answer.status_code == 403, (method, path, answer.status_code, answer.text)
            assert answer.json()["error"] == "Forbidden"
            refused.append((method, path))
    assert ("POST", "/api/v1/leases/claim") in refused and ("PUT", "/api/v1/runs/{run_id}/rollout") in refused
    assert ("GET", "/metrics") in refused and len(refused) >= 25  # the walk really covered the API
    with commander.client(token=rollout_token) as rollout:
        info = rollout.register_rollout_worker(RegisterRolloutWorker(worker_id="rw1", labels={"zone": "eu"}))
        assert (info.worker_id, info.labels, info.run_id) == ("rw1", {"zone": "eu"}, None)
        assert rollout.rollout_runs() == []
        with pytest.raises(NotFound, match="run rl is queued"):
            rollout.rollout_endpoint("rl")
    with commander.client(token=worker_token) as worker:  # the rollout endpoints are not a worker's
        with pytest.raises(Forbidden):
            worker.rollout_runs()
        with pytest.raises(Forbidden):
            worker.rollout_endpoint("rl")
        with pytest.raises(Forbidden):
            worker.register_rollout_worker(RegisterRolloutWorker(worker_id="rw2"))
    with commander.client() as admin:
        assert [w.worker_id for w in admin.rollout_workers()] == ["rw1"]


def test_announce_then_discover_over_http_and_stale_epochs_change_nothing(commander):
    with commander.client() as admin:
        rollout_token = admin.create_token("rollout-1", "rollout").token
        admin.submit(RUN)
        old = admin.claim(m.ClaimRequest(worker_id="old", wait_s=0))
        pool = [RolloutWorkerView(worker_id="rw1", version=2, groups_in_flight=1, tokens_per_s=12.5, groups_done=4,
                                  last_seen_s=0.3)]
        sent = admin.announce_rollout("rl", announce("old", old.epoch, version=2, pool=pool))
        assert (sent.epoch, sent.url, sent.version, sent.pool) == (old.epoch, URL, 2, pool)
        with commander.client(token=rollout_token) as rollout:
            assert rollout.rollout_endpoint("rl") == sent
            assert rollout.rollout_runs() == [RolloutRun(run_id="rl", epoch=old.epoch, labels={"zone": "eu"},
                                                         rollout_workers=1)]
            admin.release("rl", m.ReleaseRequest(worker_id="old", epoch=old.epoch, outcome="preempted"))
            with pytest.raises(NotFound, match="run rl is queued"):
                rollout.rollout_endpoint("rl")
            new = admin.claim(m.ClaimRequest(worker_id="new", wait_s=0))
            before = table_snapshot(commander.db)
            with pytest.raises(LeaseLost, match="stale"):
                admin.announce_rollout("rl", announce("old", old.epoch, url="http://10.9.9.9:1"))
            assert table_snapshot(commander.db) == before
            with pytest.raises(NotFound, match=r"\(epoch 2\) has not announced"):
                rollout.rollout_endpoint("rl")
            admin.announce_rollout("rl", announce("new", new.epoch, url="http://127.0.0.2:4200"))
            assert rollout.rollout_endpoint("rl").url == "http://127.0.0.2:4200"


@pytest.mark.parametrize(("path", "body", "needle"), [
    ("/api/v1/rollout/workers/rw1", {"worker_id": "rw2"}, "worker_id"),
    ("/api/v1/rollout/workers/rw1", {"worker_id": "rw1", "run_id": "bad id!"}, "run_id"),
    ("/api/v1/runs/rl/rollout", {"worker_id": "w", "epoch": 1, "url": "ftp://x", "secret": SECRET}, "url"),
    ("/api/v1/runs/rl/rollout", {"worker_id": "w", "epoch": 1, "url": URL, "secret": "short"}, "secret"),
    ("/api/v1/runs/rl/rollout", {"worker_id": "w", "epoch": 1, "url": URL, "secret": SECRET,
                                 "pool": [{"worker_id": "rw", "groups_in_flight": -1}]}, "pool.0.groups_in_flight"),
    ("/api/v1/runs/rl/rollout", {"worker_id": "w", "epoch": 1, "url": URL, "secret": SECRET,
                                 "pool": [{"worker_id": "rw", "groups_done": True}]}, "groups_done"),
])
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bad_input_is_refused_naming_the_field_and_changes_nothing(commander, path, body, needle):
    with commander.client() as admin:
        admin.submit(RUN)
        admin.register_rollout_worker(RegisterRolloutWorker(worker_id="rw1"))
    before = table_snapshot(commander.db)
    answer = httpx.put(commander.url + path, json=body, headers={"Authorization": f"Bearer {commander.token}"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] in (RequestInvalid.__name__, "RequestInvalid") and needle in answer.json()["detail"]
    assert table_snapshot(commander.db) == before
