"""Tokens that expire and are revoked: in the store (SQLite and PostgreSQL), in the authenticator's
cache, and through ``relay token create|list|revoke`` against a real commander."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from relaytrain.commander.auth import Authenticator
from relaytrain.commander.store import hash_token
from relaytrain.commander.store.tokens import LAST_USED_EVERY_S
from relaytrain.errors import AuthError, Forbidden, NotFound
from tests.integration.test_cli import relay
from tests.support.app_server import AppCommander
from tests.support.commander import wait_until

T0 = 1_000_000.0
SHOWN = {"id", "name", "scope", "created_at", "expires_at", "revoked_at", "last_used_at"}


def test_a_token_lives_until_it_expires_or_is_revoked(store):
    forever = store.create_token("forever", "worker", now=T0)
    week = store.create_token("week", "submit", expires_in_s=7 * 86400, now=T0)
    assert store.token_scope(forever, now=T0 + 10 * 365 * 86400) == "worker"
    assert store.token_scope(week, now=T0 + 7 * 86400 - 1) == "submit"
    assert store.token_scope(week, now=T0 + 7 * 86400) is None
    listed = {t["name"]: t for t in store.list_tokens()}
    assert set(listed["week"]) == SHOWN and listed["week"]["expires_at"] == T0 + 7 * 86400
    assert listed["forever"]["expires_at"] is None
    assert not any(forever in repr(t) or hash_token(forever) in repr(t) for t in store.list_tokens())

    revoked = store.revoke_token(listed["forever"]["id"], now=T0 + 5)
    assert revoked["revoked_at"] == T0 + 5 and store.token_scope(forever, now=T0 + 6) is None
    assert store.revoke_token(revoked["id"], now=T0 + 9)["revoked_at"] == T0 + 5  # again: no change
    with pytest.raises(NotFound, match="no token with id 999"):
        store.revoke_token(999)
    assert store.token_by_hash(hash_token(week))["name"] == "week"  # dead tokens are found, to be named
    assert store.token_by_hash(hash_token("nobody")) is None


def test_last_use_is_written_at_most_once_a_minute_and_never_for_a_dead_token(store):
    token = store.create_token("w", "worker", now=T0)
    dead = store.create_token("d", "worker", expires_in_s=10, now=T0)

    def last_used(name: str) -> float | None:
        return next(t["last_used_at"] for t in store.list_tokens() if t["name"] == name)

    store.token_by_hash(hash_token(token), now=T0 + 1)
    assert last_used("w") == T0 + 1
    store.token_by_hash(hash_token(token), now=T0 + LAST_USED_EVERY_S)
    assert last_used("w") == T0 + 1
    store.token_by_hash(hash_token(token), now=T0 + 1 + LAST_USED_EVERY_S)
    assert last_used("w") == T0 + 1 + LAST_USED_EVERY_S
    store.token_by_hash(hash_token(dead), now=T0 + 11)
    assert last_used("d") is None


def test_the_cache_never_outlives_a_tokens_expiry(store):
    """A token cached for 30 s is refused the moment it expires, naming it and when; the admin token
    is unaffected."""
    token = store.create_token("ci", "submit", expires_in_s=1.5)
    auth = Authenticator(store, "admin", cache_s=30.0)
    lookups = []
    by_hash = store.token_by_hash
    store.token_by_hash = lambda digest: lookups.append(digest) or by_hash(digest)

    def scope(needs: frozenset[str]) -> str:
        return asyncio.run(auth.require_async(f"Bearer {token}", needs))

    assert scope(frozenset({"submit"})) == "submit"
    with pytest.raises(Forbidden, match="a submit token cannot reach this endpoint \\(needs admin or worker\\)"):
        scope(frozenset({"worker"}))
    wait_until(lambda: _refused(scope), 10, "the expired token to be refused")
    with pytest.raises(AuthError, match=r"token 'ci' expired at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"):
        scope(frozenset({"submit"}))
    assert len(lookups) == 1, "expiry was judged from the cache, not by reading the database again"
    assert asyncio.run(auth.require_async("Bearer admin", frozenset())) == "admin"


def _refused(scope) -> bool:
    try:
        scope(frozenset({"submit"}))
    except AuthError:
        return True
    return False


@pytest.fixture
def short_cache_commander(tmp_path):
    c = AppCommander(db=str(tmp_path / "relay.db"), token="cli-admin", workdir=tmp_path, auth_cache_s=0.5).start()
    yield c
    c.stop()


def test_relay_token_create_list_revoke(short_cache_commander):
    commander = short_cache_commander
    made = relay("token", "create", "--name", "ci", "--scope", "submit", "--expires-in", "7d", commander=commander)
    token = made.stdout.strip()
    assert token.startswith("relay_s_") and "\n" not in token
    assert "'ci'" in made.stderr and "expires" in made.stderr and "shown only this once" in made.stderr
    relay("token", "create", "--name", "box", commander=commander)

    listed = json.loads(relay("token", "list", "--json", commander=commander).stdout)
    ci = next(t for t in listed if t["name"] == "ci")
    assert set(ci) == {"id", "name", "scope", "created_at", "expires_at", "revoked_at", "last_used_at"}
    assert ci["scope"] == "submit" and ci["expires_at"] == pytest.approx(ci["created_at"] + 7 * 86400)
    assert next(t for t in listed if t["name"] == "box")["expires_at"] is None
    table = relay("token", "list", commander=commander).stdout
    assert "ci" in table and "submit" in table and "never" in table
    for shown in (json.dumps(listed), table):
        assert token not in shown and hash_token(token) not in shown

    as_ci = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{commander.url}/api/v1/runs", headers=as_ci).status_code == 200  # cached now
    revoked = relay("token", "revoke", "ci", commander=commander)
    assert f"token 'ci' (id {ci['id']}) revoked; commanders refuse it within 30 s" in revoked.stdout
    refused = wait_until(lambda: (r := httpx.get(f"{commander.url}/api/v1/runs", headers=as_ci)).status_code == 401
                         and r, 10, "the revoked token to be refused")
    assert "token 'ci' was revoked at" in refused.json()["detail"]
    listed = json.loads(relay("token", "list", "--json", commander=commander).stdout)
    assert next(t for t in listed if t["name"] == "ci")["revoked_at"] is not None
    assert next(t for t in listed if t["name"] == "box")["revoked_at"] is None
    assert next(t for t in listed if t["name"] == "ci")["last_used_at"] is not None

    again = relay("token", "revoke", str(ci["id"]), commander=commander)  # by id, and again: no change
    assert "revoked" in again.stdout
    missing = relay("token", "revoke", "nobody", commander=commander, check=False)
    assert missing.returncode == 1 and "NAME_OR_ID: no token is named 'nobody'" in missing.stderr


def test_relay_token_revoke_refuses_a_name_that_several_live_tokens_share(short_cache_commander):
    commander = short_cache_commander
    for _ in range(2):
        relay("token", "create", "--name", "twin", commander=commander)
    result = relay("token", "revoke", "twin", commander=commander, check=False)
    assert result.returncode == 1 and "2 live tokens are named 'twin'" in result.stderr
    assert all(t["revoked_at"] is None for t in json.loads(relay("token", "list", "--json",
                                                                 commander=commander).stdout))


def test_an_expired_token_is_refused_naming_it(short_cache_commander):
    commander = short_cache_commander
    with commander.client() as admin:
        made = admin.create_token("brief", "viewer", expires_in_s=1)
    assert made.expires_at == pytest.approx(made.created_at + 1)
    url = f"{commander.url}/api/v1/runs"
    wait_until(lambda: httpx.get(url, headers={"Authorization": f"Bearer {made.token}"}).status_code == 401, 10,
               "the token to expire")
    answer = httpx.get(url, headers={"Authorization": f"Bearer {made.token}"}).json()
    assert answer["error"] == "AuthError" and answer["detail"].startswith("token 'brief' expired at ")


@pytest.mark.parametrize(("args", "named"), [
    (("--expires-in", "7x"), "--expires-in: '7x' must be a positive duration such as 45m, 6h or 2d"),
    (("--expires-in", "0d"), "--expires-in: '0d' must be a positive duration"),
    (("--expires-in", "-3h"), "--expires-in: '-3h' must be a positive duration"),
    (("--expires-in", "4000d"), "--expires-in: '4000d' is over 3650d"),
    (("--scope", "root"), "--scope: must be one of admin, submit, worker, rollout, viewer, not 'root'"),
])
def test_bad_token_flags_are_refused_naming_the_flag(args, named):
    """Refused before the commander is asked (nothing listens on port 9)."""
    result = relay("token", "create", *args, "--commander", "http://127.0.0.1:9", check=False)
    assert result.returncode == 1 and named in result.stderr, result.stderr


def test_the_api_refuses_a_bad_expiry_or_name_naming_the_field(short_cache_commander):
    with httpx.Client(base_url=short_cache_commander.url, headers={"Authorization": "Bearer cli-admin"}) as http:
        for bad in (0, -5, 10**10, "7d", True):
            answer = http.post("/api/v1/tokens", json={"name": "x", "scope": "worker", "expires_in_s": bad})
            assert answer.status_code == 422 and "expires_in_s" in answer.json()["detail"], (bad, answer.text)
        for name in ("", "a\x00b", "tab\there", "x" * 129):
            answer = http.post("/api/v1/tokens", json={"name": name, "scope": "worker"})
            assert answer.status_code == 422 and answer.json()["detail"].startswith("name"), (name, answer.text)
        assert http.get("/api/v1/tokens").json() == []
    started = time.time()
    with short_cache_commander.client() as admin:
        made = admin.create_token("x", "worker", expires_in_s=3600)
    assert made.expires_at == pytest.approx(started + 3600, abs=60)
