"""Every error class crosses real HTTP (the real app, served by uvicorn on loopback) and comes
back from the client as the same class with the same message, at the status the class carries."""

from __future__ import annotations

import threading

import httpx
import pytest
import uvicorn

from relaytrain.api.client import RelayClient
from relaytrain.commander.app import create_app
from relaytrain.commander.store import Store
from relaytrain.errors import AuthError, BadRequest, LeaseLost, RelayError, error_class, error_classes
from tests.support.commander import free_port, wait_until

CLASSES = sorted(error_classes().values(), key=lambda c: c.__name__)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    store = Store(str(tmp_path_factory.mktemp("errors") / "relay.db"))
    store.upgrade()
    app = create_app(store, admin_token=None)

    @app.get("/test/raise/{name}")
    async def raise_named(name: str) -> None:
        raise error_classes()[name](f"{name} raised on purpose: ünïcode, 'quotes'")

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.config.port}"
    wait_until(lambda: server.started, 20, "uvicorn to start")
    yield url
    server.should_exit = True
    thread.join(20)
    store.close()


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_round_trips(served, cls):
    message = f"{cls.__name__} raised on purpose: ünïcode, 'quotes'"
    answer = httpx.get(f"{served}/test/raise/{cls.__name__}")
    assert answer.status_code == cls.http_status
    assert answer.json() == {"error": cls.__name__, "detail": message}
    with RelayClient(served, retries=0) as client, pytest.raises(RelayError) as caught:
        client.request("GET", f"/test/raise/{cls.__name__}")
    assert type(caught.value) is cls and str(caught.value) == message


def test_the_commanders_own_refusals_round_trip(served):
    with RelayClient(served, retries=0) as client:
        with pytest.raises(BadRequest) as caught:  # RequestInvalid, a BadRequest
            client.request("GET", "/api/v1/runs", params={"limit": 0})
        assert type(caught.value).__name__ == "RequestInvalid" and "limit" in str(caught.value)
        with pytest.raises(BadRequest) as caught:
            client.request("POST", "/api/v1/tokens", json={"name": "x" * (2 << 20)})
        assert type(caught.value).__name__ == "PayloadTooLarge"


def test_an_answer_without_a_known_name_maps_by_status():
    assert error_class(None, 401) is AuthError
    assert error_class("SomethingElse", 409) is LeaseLost
    assert error_class(None, 418) is BadRequest
    assert error_class(None, 502) is RelayError


@pytest.mark.postgres
def test_a_database_that_goes_away_is_a_503_not_a_500(pg_url):
    """The commander's database refuses connections and drops the ones it had (as while PostgreSQL
    restarts): the commander answers StoreError (503), which clients retry or take to another replica
    and a worker waits out in lease jeopardy (a 500 is a bug's answer); then it serves again."""
    import psycopg
    from sqlalchemy.engine import make_url

    from relaytrain.errors import StoreError
    from tests.support.commander import PG_URL

    name = make_url(pg_url).database
    store = Store(pg_url)
    store.upgrade()
    app = create_app(store, admin_token=None)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, "uvicorn to start")
    admin = psycopg.connect(PG_URL.replace("+psycopg", ""), autocommit=True)
    try:
        with RelayClient(f"http://127.0.0.1:{server.config.port}", retries=0) as client:
            assert client.runs().items == []
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            with pytest.raises(StoreError, match="the database"):
                client.runs()
            with pytest.raises(StoreError):
                store.get_run("nothing")
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            assert client.runs().items == []
    finally:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.close()
        server.should_exit = True
        thread.join(20)
        store.close()


def test_a_405_names_every_method_of_the_path(served):
    """Routes of included routers too (FastAPI keeps them inside one entry of ``app.routes``)."""
    for path, allowed in (("/api/v1/runs", "GET, POST"), ("/api/v1/runs/some-run", "GET"),
                          ("/api/v1/tokens", "GET, POST")):
        answer = httpx.put(served + path)
        assert (answer.status_code, answer.headers.get("allow")) == (405, allowed), path
