"""Shared fixtures: databases (SQLite and PostgreSQL), stores and live commanders."""

from __future__ import annotations

import os

import pytest

from tests.support.commander import Commander, create_pg_database, drop_pg_database, pg_available

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_PG = None


def _pg_ok() -> bool:
    global _PG
    if _PG is None:
        _PG = pg_available()
    return _PG


def require_pg() -> None:
    if not _pg_ok():
        if IN_CI:
            pytest.fail("PostgreSQL is not reachable at RELAY_TEST_PG_URL, and CI=true requires it")
        pytest.skip("PostgreSQL not reachable (set RELAY_TEST_PG_URL)")


@pytest.fixture
def pg_url():
    require_pg()
    url = create_pg_database()
    yield url
    drop_pg_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield str(tmp_path / "relay.db")
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture
def store(db_url):
    from relaytrain.commander.store import Store

    s = Store(db_url)
    s.upgrade()
    yield s
    s.close()


@pytest.fixture
def commander(db_url, tmp_path):
    c = Commander(db=db_url, token="test-admin-token", workdir=tmp_path).start()
    yield c
    c.stop()
