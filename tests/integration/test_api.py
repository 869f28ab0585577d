"""The HTTP API of a real commander process: auth, fencing over HTTP, bad input, restart."""

from __future__ import annotations

import httpx
import pytest

from relaytrain.api import models as m
from relaytrain.commander.store import Store
from relaytrain.errors import AuthError, Forbidden, LeaseLost
from tests.support.commander import Commander, wait_until

RUN = {"run_id": "api-run", "kind": "command", "max_steps": 50, "trainer": {"command": ["python", "train.py"]}}
SHA = "cd" * 32


def table_snapshot(db: str) -> dict:
    """Every row of every table, to prove a refused request changed nothing (but a token's
    ``last_used_at``: any request that presents a live token is a use of it, refused or not; and the
    commander's beat, which its sweeper writes every sweep interval whatever the requests)."""
    import sqlalchemy as sa

    from relaytrain.commander.store.schema import commander_beat, metadata

    store = Store(db)
    with store.engine.connect() as conn:
        snap = {t.name: sorted(map(repr, conn.execute(sa.select(*(c for c in t.c if c.name != "last_used_at"))).all()))
                for t in metadata.sorted_tables if t is not commander_beat}
    store.close()
    return snap


@pytest.fixture
def http(commander):
    with httpx.Client(base_url=commander.url, headers={"Authorization": f"Bearer {commander.token}"}) as c:
        yield c


@pytest.fixture
def shared_http(module_commander):
    """A client of the module's shared commander (``module_commander``)."""
    with httpx.Client(base_url=module_commander.url,
                      headers={"Authorization": f"Bearer {module_commander.token}"}) as c:
        yield c


def test_health_needs_no_token(commander):
    body = httpx.get(f"{commander.url}/api/v1/health").json()
    assert body["status"] == "ok" and body["database"] in ("sqlite", "postgresql")


def test_tokens_and_scopes(commander):
    with commander.client() as admin:
        worker_token = admin.create_token("w1").token
        admin.submit(RUN)
    with commander.client(token="") as anonymous, pytest.raises(AuthError, match="missing bearer token"):
        anonymous.runs()
    with commander.client(token="wrong") as stranger, pytest.raises(AuthError, match="unknown"):
        stranger.runs()
    with commander.client(token=worker_token) as worker:
        with pytest.raises(Forbidden):
            worker.runs()
        with pytest.raises(Forbidden):
            worker.submit({**RUN, "run_id": "sneaky"})
        worker.register(m.RegisterWorker(worker_id="w1"))
        grant = worker.claim(m.ClaimRequest(worker_id="w1", wait_s=0))
        assert grant.run_id == "api-run" and grant.config["trainer"]["command"] == ["python", "train.py"]
        chunk = m.LogChunk(seq=0, stream="stderr", ts=1, text="hello\n")
        worker.append_logs("api-run", m.LogAppend(worker_id="w1", epoch=grant.epoch, chunks=[chunk]))
        with pytest.raises(Forbidden):
            worker.logs("api-run")  # shipping is the worker's; reading is not
    with commander.client() as admin:
        assert [i.text for i in admin.logs("api-run").items] == ["hello\n"]
    for path in ("/api/v1/runs", "/metrics", "/api/v1/workers"):
        assert httpx.get(commander.url + path).status_code == 401



def test_token_scopes_are_cached_until_their_ttl(tmp_path):
    """A worker token is looked up once per ``cache_s``; a revoked one stops working within it."""
    import asyncio

    import sqlalchemy as sa

    from relaytrain.commander.auth import Authenticator
    from relaytrain.commander.store.schema import tokens

    store = Store(str(tmp_path / "relay.db"))
    store.upgrade()
    try:
        worker_token = store.create_token("w1", "worker")
        lookups = []
        by_hash = store.token_by_hash
        store.token_by_hash = lambda digest: lookups.append(digest) or by_hash(digest)
        auth = Authenticator(store, "admin", cache_s=3.0, cache_size=2)

        def scope(token: str, needs: str = "worker") -> str:
            return asyncio.run(auth.require_async(f"Bearer {token}", {needs} - {"admin"}))

        assert scope("admin") == "admin" and lookups == []  # the admin token never reaches the database
        assert [scope(worker_token) for _ in range(3)] == ["worker"] * 3
        assert len(lookups) == 1
        with pytest.raises(Forbidden):
            scope(worker_token, "admin")
        with pytest.raises(AuthError, match="unknown"):
            scope("wrong")
        with store.engine.begin() as conn:
            conn.execute(sa.update(tokens).values(revoked_at=1.0))
        assert scope(worker_token) == "worker"  # still cached: revocation takes up to cache_s
        wait_until(lambda: _refused(scope, worker_token), 10, "the revoked token to be refused")
        for i in range(3):
            with pytest.raises(AuthError):
                scope(f"stranger-{i}")
        assert len(auth._cache) == 2  # bounded: the oldest entries were evicted
    finally:
        store.close()


def _refused(scope, token: str) -> bool:
    try:
        scope(token)
    except AuthError:
        return True
    return False


def test_fencing_over_http(commander):
    """After a re-grant, every write of the old holder is refused with 409 and changes nothing."""
    with commander.client() as c:
        c.submit(RUN)
        old = c.claim(m.ClaimRequest(worker_id="old", wait_s=0))
        c.commit_checkpoint("api-run", m.CheckpointCommit(worker_id="old", epoch=old.epoch, step=10,
                                                          uri="file:///x/10", manifest_sha256=SHA))
        c.release("api-run", m.ReleaseRequest(worker_id="old", epoch=old.epoch, outcome="preempted"))
        new = c.claim(m.ClaimRequest(worker_id="new", wait_s=0))
        assert new.epoch == old.epoch + 1 and new.checkpoint.step == 10
        before = table_snapshot(commander.db)
        lease = {"worker_id": "old", "epoch": old.epoch}
        with pytest.raises(LeaseLost):
            c.renew("api-run", "old", old.epoch)
        with pytest.raises(LeaseLost):
            c.progress("api-run", m.ProgressRequest(**lease, points=[m.ProgressPoint(step=11)]))
        with pytest.raises(LeaseLost):
            c.commit_checkpoint("api-run", m.CheckpointCommit(**lease, step=12, uri="u", manifest_sha256=SHA))
        with pytest.raises(LeaseLost):
            c.release("api-run", m.ReleaseRequest(**lease, outcome="succeeded"))
        with pytest.raises(LeaseLost):
            c.append_logs("api-run", m.LogAppend(**lease, chunks=[m.LogChunk(seq=0, stream="stdout", ts=1, text="x")]))
        assert table_snapshot(commander.db) == before
        assert c.renew("api-run", "new", new.epoch).cancel_requested is False


def test_claim_long_polls_until_a_run_arrives(commander):
    """A claim waiting on an empty queue is answered as soon as a run is submitted."""
    import threading

    with commander.client() as c:
        result = {}
        waiter = threading.Thread(
            target=lambda: result.update(grant=c.claim(m.ClaimRequest(worker_id="w", wait_s=20))))
        waiter.start()
        with commander.client() as submitter:
            submitter.submit(RUN)
        waiter.join(timeout=25)
        assert result["grant"] is not None and result["grant"].run_id == "api-run"


HOSTILE_IDS = ["..%2Fx", "a" * 10_000, "a%00b", "%C3%A9t%C3%A9", "UPPER", "-lead", "a%2Fb"]


@pytest.mark.parametrize("run_id", HOSTILE_IDS)
def test_hostile_run_ids_are_refused(module_commander, shared_http, run_id):
    commander, http = module_commander, shared_http
    before = table_snapshot(commander.db)
    for method, path in (("GET", ""), ("POST", "/cancel"), ("GET", "/events")):
        response = http.request(method, f"/api/v1/runs/{run_id}{path}")
        assert 400 <= response.status_code < 500, (run_id, path, response.status_code)
    response = http.post(f"/api/v1/runs/{run_id}/lease/renew", json={"worker_id": "w", "epoch": 1})
    assert 400 <= response.status_code < 500
    body = {**RUN, "run_id": run_id.replace("%2F", "/").replace("%00", "\x00")}
    response = http.post("/api/v1/runs", json=body)
    assert response.status_code == 422 and "run_id" in response.json()["detail"]
    assert table_snapshot(commander.db) == before


BAD_BODIES = [
    ("/api/v1/runs", b"{not json", 422),
    ("/api/v1/runs", b"[]", 422),
    ("/api/v1/runs", b'{"run_id": "x", "kind": "sft", "max_steps": "many"}', 422),
    ("/api/v1/runs", b'{"run_id": "x", "kind": "command", "max_steps": 5, "trainer": {"command": ""}}', 422),
    ("/api/v1/runs", b'{"run_id": "x", "kind": "sft", "max_steps": 5, "checkpoint": {"every_steps": 0}}', 422),
    ("/api/v1/leases/claim", b'{"worker_id": "../etc", "wait_s": 0}', 422),
    ("/api/v1/leases/claim", b'{"worker_id": "w", "wait_s": 1e9}', 422),
    ("/api/v1/runs/x/lease/renew", b'{"worker_id": "w", "epoch": "one"}', 422),
    ("/api/v1/runs/x/lease/release", b'{"worker_id": "w", "epoch": 1, "outcome": "failed"}', 422),
    ("/api/v1/runs/x/lease/release", b'{"worker_id": "w", "epoch": 1, "outcome": "exploded"}', 422),
    ("/api/v1/runs/x/progress", b'{"worker_id": "w", "epoch": 1, "points": []}', 422),
    ("/api/v1/runs/x/progress", b'{"worker_id": "w", "epoch": 1, "points": [{"step": 1, "metrics": {"a\\u0000": 1}}]}',
     422),
    ("/api/v1/runs/x/checkpoints", b'{"worker_id": "w", "epoch": 1, "step": 1, "uri": "u", "manifest_sha256": "z"}',
     422),
    ("/api/v1/runs/x/logs", b'{"worker_id": "w", "epoch": 1, "chunks": [{"seq": 0, "stream": "stdout", "ts": 1, '
     b'"text": "abc"}, {"seq": 2, "stream": "stderr", "ts": 1, "text": "d"}]}', 422),
    ("/api/v1/runs/x/logs", b'{"worker_id": "w", "epoch": 1, "chunks": [{"seq": 0, "stream": "tty", "ts": 1, '
     b'"text": "a"}]}', 422),
    ("/api/v1/runs/x/logs", b'{"worker_id": "w", "epoch": 1, "chunks": []}', 422),
    ("/api/v1/runs/unknown/lease/renew", b'{"worker_id": "w", "epoch": 1}', 404),
    ("/api/v1/runs", b"x" * (2 << 20), 413),
]


@pytest.mark.parametrize(("path", "body", "status"), BAD_BODIES)
def test_bad_input_gets_a_clear_4xx_and_changes_nothing(module_commander, shared_http, path, body, status):
    commander, http = module_commander, shared_http
    http.post("/api/v1/runs", json={**RUN, "run_id": "existing"})  # 201, or 409 once another test made it
    before = table_snapshot(commander.db)
    response = http.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["detail"]
    assert table_snapshot(commander.db) == before


def test_validation_errors_name_the_field(http):
    response = http.post("/api/v1/runs", json={**RUN, "checkpoint": {"every_steps": 0}})
    assert response.status_code == 422
    assert "checkpoint.every_steps" in response.json()["detail"]


def test_runs_are_paginated_and_filtered(http):
    for i in range(7):
        assert http.post("/api/v1/runs", json={**RUN, "run_id": f"r{i}"}).status_code == 201
    page = http.get("/api/v1/runs", params={"limit": 3}).json()
    assert (len(page["items"]), page["total"], page["next_offset"]) == (3, 7, 3)
    last = http.get("/api/v1/runs", params={"limit": 3, "offset": 6}).json()
    assert len(last["items"]) == 1 and last["next_offset"] is None
    assert http.get("/api/v1/runs", params={"status": "running"}).json()["total"] == 0
    assert http.get("/api/v1/runs", params={"limit": 501}).status_code == 422


def test_prometheus_metrics(commander, http):
    http.post("/api/v1/runs", json=RUN)
    with commander.client() as c:
        grant = c.claim(m.ClaimRequest(worker_id="w", wait_s=0))
        c.renew("api-run", "w", grant.epoch)
        with pytest.raises(LeaseLost):
            c.renew("api-run", "w", grant.epoch + 5)
    text = http.get("/metrics").text
    assert "relay_grants_total 1.0" in text
    assert "relay_renewals_total 1.0" in text
    assert "relay_fenced_total 1.0" in text
    assert 'relay_runs{status="running"} 1.0' in text
    assert 'route="/api/v1/runs/{run_id}/lease/renew"' in text


def test_restart_keeps_runs_epochs_and_live_leases(db_url, tmp_path):
    first = Commander(db=db_url, token="t", workdir=tmp_path).start()
    with first.client() as c:
        c.submit(RUN)
        c.submit({**RUN, "run_id": "queued-one"})
        grant = c.claim(m.ClaimRequest(worker_id="w", wait_s=0))
        c.commit_checkpoint(grant.run_id, m.CheckpointCommit(worker_id="w", epoch=grant.epoch, step=5,
                                                             uri="u5", manifest_sha256=SHA))
        before = c.run(grant.run_id)
    first.stop()
    second = Commander(db=db_url, token="t", workdir=tmp_path, port=first.port).start()
    try:
        with second.client() as c:
            renewed = c.renew(grant.run_id, "w", grant.epoch)  # the worker keeps its lease across the restart
            assert renewed.expires_at >= grant.expires_at
            after = c.run(grant.run_id)
            assert (after.status, after.epoch, after.holder) == ("running", grant.epoch, "w")
            assert after.attempts == before.attempts and after.latest_checkpoint == before.latest_checkpoint
            assert c.run("queued-one").status == "queued"
    finally:
        second.stop()


def test_serve_refuses_public_address_without_token(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "relaytrain.cli", "serve", "--host", "0.0.0.0", "--db", str(tmp_path / "x.db")],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "give --token" in result.stderr
    assert not (tmp_path / "x.db").exists()
