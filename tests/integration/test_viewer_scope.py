"""The ``viewer`` token scope on a real commander: it reaches the GETs the dashboard reads and
nothing else, and it never sees a secret of a run's config."""

from __future__ import annotations

import httpx
import pytest

from relaytrain.api import models as m
from relaytrain.api.rollout import RolloutAnnounce, RolloutPool, RolloutWorkerView
from relaytrain.commander.store import Store
from relaytrain.config import REDACTED
from relaytrain.errors import Forbidden
from tests.integration.test_api import table_snapshot

RUN = {"run_id": "seen", "kind": "command", "max_steps": 5,
       "store": {"uri": "s3://bucket/relay", "endpoint_url": "https://minio.lan:9000"},
       "trainer": {"command": ["python", "t.py"], "env": {"HF_TOKEN": {"value": "hf_s3cret", "secret": False},
                                                         "WANDB_API_KEY": {"from_worker_env": "TEAM_WANDB_KEY"},
                                                         "DB_PASSWORD": {"value": "pw", "secret": False},
                                                         "BATCH": "64"}}}
"""Secrets cannot be inline any more (docs/security.md); values named like one, marked not secret,
are still hidden from a viewer, and so is where the worker reads a secret from."""
SECRETS = ("hf_s3cret", "TEAM_WANDB_KEY", '"pw"')
VIEWER_ROUTES = {
    ("GET", "/api/v1/runs"), ("GET", "/api/v1/runs/{run_id}"), ("GET", "/api/v1/runs/{run_id}/events"),
    ("GET", "/api/v1/runs/{run_id}/checkpoints"), ("GET", "/api/v1/runs/{run_id}/evaluations"),
    ("GET", "/api/v1/runs/{run_id}/ledger"), ("GET", "/api/v1/ledger"), ("GET", "/api/v1/runs/{run_id}/metrics"),
    ("GET", "/api/v1/runs/{run_id}/metrics/names"),
    ("GET", "/api/v1/runs/{run_id}/rollout/pool"), ("GET", "/api/v1/runs/{run_id}/logs"),
    ("GET", "/api/v1/workers"), ("GET", "/api/v1/rollout/workers"),
    ("GET", "/api/v1/hosts"), ("GET", "/api/v1/hosts/{name}"),
}
"""Every route a viewer token may call: what the dashboard reads."""
PATH_VALUES = {"run_id": "seen", "worker_id": "w1", "name": "host1", "token_id": "1"}


def test_a_viewer_token_reads_what_the_dashboard_shows_and_changes_nothing(commander):
    with commander.client() as admin:
        viewer_token = admin.create_token("screen", "viewer").token
        admin.submit(RUN)
        document = httpx.get(f"{commander.url}/openapi.json").json()
    assert viewer_token.startswith("relay_v_")
    routes = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    assert VIEWER_ROUTES <= routes
    before = table_snapshot(commander.db)
    refused = []
    with httpx.Client(base_url=commander.url, headers={"Authorization": f"Bearer {viewer_token}"}) as http:
        for method, path in sorted(routes - {("GET", "/api/v1/health")}):
            answer = http.request(method, path.format(**PATH_VALUES), **({} if method == "GET" else {"json": {}}))
            if (method, path) in VIEWER_ROUTES:
                assert answer.status_code in (200, 404), (method, path, answer.status_code, answer.text)
            else:
                assert answer.status_code == 403, (method, path, answer.status_code, answer.text)
                assert answer.json()["error"] == "Forbidden"
                refused.append((method, path))
        # The dashboard's page and files need no token; they hold no data.
        assert http.get("/", headers={"Authorization": ""}).status_code == 200
    assert {("POST", "/api/v1/runs/{run_id}/cancel"), ("POST", "/api/v1/runs"), ("POST", "/api/v1/tokens"),
            ("POST", "/api/v1/leases/claim"), ("GET", "/metrics"), ("PUT", "/api/v1/hosts/{name}"),
            ("GET", "/api/v1/runs/{run_id}/rollout")} <= set(refused)
    assert table_snapshot(commander.db) == before, "a refused viewer request changed the database"
    with commander.client(token=viewer_token) as viewer:
        with pytest.raises(Forbidden, match="viewer token cannot reach this endpoint"):
            viewer.cancel("seen")
        assert viewer.run("seen").status == "queued"


def test_a_viewer_never_sees_a_secret_of_the_config_and_the_admin_may_ask_not_to(commander):
    with commander.client() as admin:
        viewer_token = admin.create_token("screen", "viewer").token
        admin.submit(RUN)
        raw = admin.run("seen").config
        assert raw["trainer"]["env"]["HF_TOKEN"] == {"value": "hf_s3cret", "secret": False}  # the admin's own read
    with commander.client(token=viewer_token) as viewer:
        seen = viewer.run("seen").config
    env = seen["trainer"]["env"]
    assert (env["HF_TOKEN"], env["WANDB_API_KEY"], env["DB_PASSWORD"], env["BATCH"]) == (REDACTED,) * 3 + ("64",)
    assert seen["store"]["endpoint_url"] == "https://minio.lan:9000"
    asked = httpx.get(f"{commander.url}/api/v1/runs/seen", params={"redact": "true"},
                      headers={"Authorization": f"Bearer {commander.token}"})
    for body in (str(seen), asked.text):
        assert not any(s in body for s in SECRETS), body


def test_workers_say_whether_they_are_alive(commander):
    with commander.client() as admin:
        admin.register(m.RegisterWorker(worker_id="w1"))
        (info,) = admin.workers()
    assert info.alive and info.worker_id == "w1"


def test_a_worker_unheard_for_longer_than_dead_after_is_dead(tmp_path):
    store = Store(str(tmp_path / "relay.db"))
    store.upgrade()
    try:
        store.register_worker("w1", provider="local", hostname=None, version=None, resources={}, now=1000.0)
        assert store.list_workers(now=1000.0 + m.WORKER_DEAD_AFTER_S)[0]["alive"]
        assert not store.list_workers(now=1000.0 + m.WORKER_DEAD_AFTER_S + 1)[0]["alive"]
    finally:
        store.close()


def test_a_viewer_reads_the_rollout_pool_without_the_managers_secret(commander):
    secret = "s" * 24
    with commander.client() as admin:
        viewer_token = admin.create_token("screen", "viewer").token
        admin.submit({"run_id": "rl", "kind": "grpo", "max_steps": 5, "rollout": {}})
        grant = admin.claim(m.ClaimRequest(worker_id="w1", wait_s=0))
        pool = [RolloutWorkerView(worker_id="rw1", version=3, groups_in_flight=2, tokens_per_s=9.5, groups_done=7)]
        admin.announce_rollout("rl", RolloutAnnounce(worker_id="w1", epoch=grant.epoch, url="http://127.0.0.1:4100",
                                                     secret=secret, version=3, pool=pool))
    as_viewer = {"Authorization": f"Bearer {viewer_token}"}
    seen = httpx.get(f"{commander.url}/api/v1/runs/rl/rollout/pool", headers=as_viewer)
    assert seen.status_code == 200 and secret not in seen.text
    body = RolloutPool.model_validate(seen.json())
    assert (body.run_id, body.epoch, body.version, body.pool) == ("rl", grant.epoch, 3, pool)
    gone = httpx.get(f"{commander.url}/api/v1/runs/nope/rollout/pool", headers=as_viewer)
    assert gone.status_code == 404 and "nope" in gone.json()["detail"]
