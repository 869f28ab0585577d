"""RelayClient over several commander URLs: it sticks to the one that answers and moves to the
next when one gives no answer (refused, hung, 502/503/504), never on an answer it dislikes (4xx).
Real HTTP servers on loopback, one of them stopped or broken."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from relaytrain.api.client import RelayClient, commander_urls
from relaytrain.errors import CommanderUnavailable, ConfigError, NotFound
from tests.support.commander import free_port

HEALTH = {"status": "ok", "version": "test", "database": "sqlite"}


class Server:
    """A loopback HTTP server answering every GET with ``status`` (and a health body on 200);
    ``hang`` accepts connections and never answers. Counts the requests it got."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                outer.hits += 1
                body = json.dumps(HEALTH if outer.status == 200 else {"detail": "nope", "error": None}).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    made: list[Server] = []

    def make(status: int = 200) -> Server:
        made.append(Server(status))
        return made[-1]

    yield make
    for server in made:
        server.stop()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_it_moves_past_a_dead_replica_and_sticks_to_the_live_one(servers):
    live = servers()
    dead = dead_url()
    with RelayClient([dead, live.url], retries=0) as client:
        assert client.base_url == dead
        assert client.health().status == "ok"
        assert client.base_url == live.url
        client.health()
        client.health()
    assert live.hits == 3


def test_a_replica_stopped_mid_way_hands_over_to_the_next(servers):
    first, second = servers(), servers()
    with RelayClient(f"{first.url},{second.url}", retries=0) as client:
        client.health()
        assert (first.hits, second.hits, client.base_url) == (1, 0, first.url)
        first.stop()
        client.health()
        assert client.base_url == second.url
        client.health()
    assert (first.hits, second.hits) == (1, 2)


@pytest.mark.parametrize("status", [502, 503, 504])
def test_an_unavailable_answer_fails_over(servers, status):
    sick, live = servers(status), servers()
    with RelayClient([sick.url, live.url], retries=0) as client:
        assert client.health().status == "ok"
        assert client.base_url == live.url
    assert (sick.hits, live.hits) == (1, 1)


def test_a_4xx_is_an_answer_not_a_failure(servers):
    missing, live = servers(404), servers()
    with RelayClient([missing.url, live.url], retries=0) as client:
        with pytest.raises(NotFound):
            client.health()
        assert client.base_url == missing.url
    assert (missing.hits, live.hits) == (1, 0)


def test_a_hung_replica_costs_one_call_within_its_timeout_then_the_next_answers(servers):
    live = servers()
    with socket.socket() as hung:  # accepts connections (the backlog) and never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        hung_url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        with RelayClient([hung_url, live.url], timeout_s=0.5, retries=0) as client:
            with pytest.raises(CommanderUnavailable):
                client.health()  # the hung one ate the call's whole timeout: no time left for the next
            assert client.base_url == live.url
            assert client.health().status == "ok"
    assert live.hits == 1


def test_no_replica_answering_names_them_all():
    urls = [dead_url(), dead_url()]
    with RelayClient(urls, retries=1, backoff_s=0.01) as client:
        with pytest.raises(CommanderUnavailable) as err:
            client.health()
    assert all(url in str(err.value) for url in urls)


def test_commander_urls_parses_one_place():
    assert commander_urls("http://a:8080") == ["http://a:8080"]
    assert commander_urls(" http://a:8080/ , https://b ,http://a:8080") == ["http://a:8080", "https://b"]
    assert commander_urls(["http://a", "http://[::1]:9"]) == ["http://a", "http://[::1]:9"]


@pytest.mark.parametrize("value, bad", [
    ("http://a,notaurl", "notaurl"),
    ("ftp://a", "ftp://a"),
    ("http://a,,http://b", ""),
    ("http://a:port", "http://a:port"),
    ("http://", "http://"),
])
def test_commander_urls_names_the_bad_one(value, bad):
    with pytest.raises(ConfigError, match=f"commander URL {bad!r}"):
        commander_urls(value)
    with pytest.raises(ConfigError, match=f"commander URL {bad!r}"):
        RelayClient(value)


def test_a_rollout_worker_asks_the_next_replica_when_one_is_down(tmp_path):
    from relaytrain.rollout.worker import CommanderDirectory
    from tests.support.commander import Commander

    commander = Commander(db=str(tmp_path / "relay.db"), token="admin", workdir=tmp_path).start()
    try:
        with commander.client() as admin:
            token = admin.create_token("gen", scope="rollout").token
        directory = CommanderDirectory(f"{dead_url()},{commander.url}", token)
        assert directory.runs() == []
        assert directory.endpoint("no-such-run") is None
        assert directory.client.base_url == commander.url
        directory.client.close()
    finally:
        commander.stop()
