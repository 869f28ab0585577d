"""Every route of the app against every kind of token, on a real commander (SQLite): the routes are
read from ``create_app(...).routes``, so a new route that this table does not decide fails the
test, and an app whose route takes no scope decision refuses to start."""

from __future__ import annotations

import time

import httpx
import pytest
from fastapi import APIRouter

from relaytrain.commander import app as app_module
from relaytrain.commander.app import create_app
from relaytrain.commander.routes.deps import READ, WORKER, app_routes, is_api_route
from relaytrain.commander.store import Store
from relaytrain.errors import InvalidState
from tests.integration.test_api import table_snapshot
from tests.support.commander import Commander

ADMIN_TOKEN = "matrix-admin"
ADMITS = {
    "open": {"admin", "submit", "worker", "rollout", "viewer", "none", "unknown", "expired", "revoked"},
    "admin": {"admin"},
    "submit": {"admin", "submit"},
    "read": {"admin", "submit", "viewer"},
    "worker": {"admin", "worker"},
    "rollout": {"admin", "rollout"},
}
"""Who each decision admits; every other identity gets 401 (no live token) or 403 (a live one)."""
LIVE = ("admin", "submit", "worker", "rollout", "viewer")
DEAD = ("none", "unknown", "expired", "revoked")
EXPECTED = {
    ("GET", "/api/v1/health"): "open",
    ("GET", "/"): "open",
    ("GET", "/ui"): "open",
    ("GET", "/openapi.json"): "open", ("HEAD", "/openapi.json"): "open",
    ("GET", "/docs"): "open", ("HEAD", "/docs"): "open",
    ("GET", "/docs/oauth2-redirect"): "open", ("HEAD", "/docs/oauth2-redirect"): "open",
    ("GET", "/redoc"): "open", ("HEAD", "/redoc"): "open",
    # submitting: kind command runs are code that workers run
    ("POST", "/api/v1/runs"): "submit",
    ("POST", "/api/v1/runs/{run_id}/cancel"): "submit",
    ("POST", "/api/v1/runs/{run_id}/resume"): "submit",
    # what the dashboard reads
    ("GET", "/api/v1/runs"): "read",
    ("GET", "/api/v1/runs/{run_id}"): "read",
    ("GET", "/api/v1/runs/{run_id}/events"): "read",
    ("GET", "/api/v1/runs/{run_id}/checkpoints"): "read",
    ("GET", "/api/v1/runs/{run_id}/evaluations"): "read",
    ("GET", "/api/v1/runs/{run_id}/ledger"): "read",
    ("GET", "/api/v1/ledger"): "read",
    ("GET", "/api/v1/runs/{run_id}/metrics"): "read",
    ("GET", "/api/v1/runs/{run_id}/metrics/names"): "read",
    ("GET", "/api/v1/runs/{run_id}/logs"): "read",
    ("GET", "/api/v1/runs/{run_id}/rollout/pool"): "read",
    ("GET", "/api/v1/workers"): "read",
    ("GET", "/api/v1/rollout/workers"): "read",
    ("GET", "/api/v1/hosts"): "read",
    ("GET", "/api/v1/hosts/{name}"): "read",
    # administration
    ("GET", "/metrics"): "admin",
    ("POST", "/api/v1/tokens"): "admin",
    ("GET", "/api/v1/tokens"): "admin",
    ("POST", "/api/v1/tokens/{token_id}/revoke"): "admin",
    ("PUT", "/api/v1/hosts/{name}"): "admin",
    ("PATCH", "/api/v1/hosts/{name}"): "admin",
    ("DELETE", "/api/v1/hosts/{name}"): "admin",
    # workers
    ("POST", "/api/v1/workers/register"): "worker",
    ("POST", "/api/v1/workers/{worker_id}/heartbeat"): "worker",
    ("POST", "/api/v1/leases/claim"): "worker",
    ("POST", "/api/v1/runs/{run_id}/lease/renew"): "worker",
    ("POST", "/api/v1/runs/{run_id}/lease/release"): "worker",
    ("POST", "/api/v1/runs/{run_id}/lease/resumed"): "worker",
    ("POST", "/api/v1/runs/{run_id}/progress"): "worker",
    ("POST", "/api/v1/runs/{run_id}/checkpoints"): "worker",
    ("POST", "/api/v1/runs/{run_id}/logs"): "worker",
    ("PUT", "/api/v1/runs/{run_id}/rollout"): "worker",
    # rollout workers
    ("GET", "/api/v1/runs/{run_id}/rollout"): "rollout",
    ("GET", "/api/v1/rollout/runs"): "rollout",
    ("PUT", "/api/v1/rollout/workers/{worker_id}"): "rollout",
}
"""The scope decision of every route, written out here independently of the routes' code."""
PATH_VALUES = {"run_id": "r1", "worker_id": "w1", "name": "host1", "token_id": "999999"}
"""A token id no token has: the admitted revoke answers 404 and revokes nothing."""
UI_FILE = "/ui/dashboard.js"


def served_routes(tmp_path) -> set[tuple[str, str]]:
    """Every (method, path) of ``create_app(...)``; a mount as its path."""
    store = Store(str(tmp_path / "routes.db"))
    store.upgrade()
    try:
        app = create_app(store, admin_token=ADMIN_TOKEN)
    finally:
        store.close()
    found = set()
    for route in app_routes(app):
        methods = route.methods if route.methods is not None else {"GET"}  # a mount: its files are read
        found.update((method, route.path) for method in methods)
    return found


def test_every_route_has_a_decision_in_this_table(tmp_path):
    routes = served_routes(tmp_path)
    undecided = sorted(routes - EXPECTED.keys())
    assert not undecided, f"routes without an expected scope here (decide it in routes/deps, then add it): {undecided}"
    assert not sorted(EXPECTED.keys() - routes), "the table names routes the app does not serve"


def test_every_route_admits_exactly_the_scopes_of_its_decision(tmp_path):
    db = str(tmp_path / "relay.db")
    store = Store(db)
    store.upgrade()
    try:
        tokens = {"admin": ADMIN_TOKEN, "unknown": "relay_s_nobody-made-this-token"}
        tokens.update({scope: store.create_token(f"{scope}-1", scope) for scope in LIVE if scope != "admin"})
        # Dead tokens of the strongest scope: refused all the same.
        tokens["expired"] = store.create_token("old", "admin", expires_in_s=60, now=time.time() - 120)
        tokens["revoked"] = store.create_token("gone", "admin")
        store.revoke_token(next(t["id"] for t in store.list_tokens() if t["name"] == "gone"))
    finally:
        store.close()
    commander = Commander(db=db, token=ADMIN_TOKEN, workdir=tmp_path).start()
    wrong = []
    try:
        with httpx.Client(base_url=commander.url, timeout=30) as http:
            for method, path in sorted(served_routes(tmp_path)):
                decision = EXPECTED[(method, path)]
                url = UI_FILE if path == "/ui" else path.format(**PATH_VALUES)
                body = {} if method in ("POST", "PUT", "PATCH") else None
                for who in (*LIVE, *DEAD):
                    headers = {} if who == "none" else {"Authorization": f"Bearer {tokens[who]}"}
                    status = http.request(method, url, json=body, headers=headers).status_code
                    want = "admitted" if who in ADMITS[decision] else 401 if who in DEAD else 403
                    got = status if status in (401, 403) else "admitted"
                    if got != want:
                        wrong.append(f"{method} {path} as {who}: {status}, want {want}")
    finally:
        commander.stop()
    assert not wrong, "\n".join(wrong)


def test_only_admin_and_submit_tokens_queue_a_command_run(tmp_path):
    """Every submitting route (submit, resume, cancel) refuses worker, rollout and viewer tokens and
    changes nothing; a submit token queues a ``kind: command`` run, and cancels and resumes it."""
    commander = Commander(db=str(tmp_path / "relay.db"), token=ADMIN_TOKEN, workdir=tmp_path).start()
    run = {"run_id": "cmd", "kind": "command", "max_steps": 5, "trainer": {"command": "echo hello"}}
    try:
        with commander.client() as admin:
            tokens = {scope: admin.create_token(scope, scope).token for scope in ("submit", "worker", "rollout",
                                                                                  "viewer")}
            admin.submit({**run, "run_id": "ended"})
            admin.cancel("ended")
        before = table_snapshot(commander.db)
        for scope in ("worker", "rollout", "viewer"):
            with httpx.Client(base_url=commander.url, headers={"Authorization": f"Bearer {tokens[scope]}"}) as http:
                for path, body in (("/api/v1/runs", run), ("/api/v1/runs/ended/resume", {}),
                                   ("/api/v1/runs/ended/cancel", None)):
                    answer = http.post(path, json=body)
                    assert answer.status_code == 403, (scope, path, answer.text)
                    assert f"a {scope} token cannot reach this endpoint (needs admin or submit)" in answer.text
        assert table_snapshot(commander.db) == before, "a refused submission changed the database"
        with commander.client(token=tokens["submit"]) as submitter:
            assert submitter.submit(run).status == "queued"  # a shell string
            argv = {**run, "run_id": "cmd-argv", "trainer": {"command": ["echo", "hello"]}}
            assert submitter.submit(argv).status == "queued"
            assert submitter.cancel("cmd").status == "cancelled"
            with pytest.raises(InvalidState, match="no durable checkpoint"):  # admitted: the run's state refuses
                submitter.resume("cmd")
            # A submitter reads configs in clear: relay eval and relay resume copy and verify the store from them.
            assert submitter.run("cmd-argv").config["trainer"]["command"] == ["echo", "hello"]
    finally:
        commander.stop()


def test_an_app_with_a_route_that_takes_no_scope_decision_refuses_to_start(tmp_path, monkeypatch):
    store = Store(str(tmp_path / "relay.db"))
    store.upgrade()
    forgotten = APIRouter()

    @forgotten.get("/api/v1/forgotten")
    async def forgotten_route() -> dict:
        return {}

    torn = APIRouter()

    @torn.get("/api/v1/torn", dependencies=[READ, WORKER])
    async def torn_route() -> dict:
        return {}

    routers = list(app_module.ROUTERS)
    try:
        for router, what in ((forgotten, "GET /api/v1/forgotten takes no scope decision"),
                             (torn, "GET /api/v1/torn takes several scope decisions")):
            monkeypatch.setattr(app_module, "ROUTERS", [*routers, router])
            with pytest.raises(ValueError, match=what):
                create_app(store, admin_token=ADMIN_TOKEN)
        monkeypatch.undo()
        app = create_app(store, admin_token=ADMIN_TOKEN)
        assert sum(map(is_api_route, app_routes(app))) == sum(d != "open" for d in EXPECTED.values()) + 2  # + health, /
    finally:
        store.close()
