"""Shared fixtures: databases (SQLite and PostgreSQL), stores and live commanders."""

from __future__ import annotations

import os

import pytest

# pytest-xdist starts its workers with COLUMNS=80 in the environment; the CLI's rich consoles would
# freeze that width when first imported, and tests that give a CLI run its own COLUMNS would get
# tables cut at 80 columns. Without it the consoles read the width when they print.
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)

from tests.support.commander import PG_URL, Commander, fresh_database, pg_problem  # noqa: E402
from tests.support.requires import missing  # noqa: E402

_PG_PROBLEM: list[str | None] = []  # asked once per session


def require_pg() -> None:
    if not _PG_PROBLEM:
        _PG_PROBLEM.append(pg_problem())
    if _PG_PROBLEM[0] is not None:
        missing(f"needs PostgreSQL, not reachable at RELAY_TEST_PG_URL={PG_URL} ({_PG_PROBLEM[0]})")


@pytest.fixture
def pg_url(tmp_path):
    require_pg()
    with fresh_database("postgresql", tmp_path) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        with fresh_database("sqlite", tmp_path) as path:
            yield path
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


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def module_commander(request, tmp_path_factory):
    """A commander on a fresh database of each kind, shared by one module's tests: for tests that
    hold whatever state the others left (a refused request changes nothing, whatever is there)."""
    if request.param == "postgresql":
        require_pg()
    folder = tmp_path_factory.mktemp(f"commander-{request.param}")
    with fresh_database(request.param, folder) as url:
        c = Commander(db=url, token="test-admin-token", workdir=folder).start()
        yield c
        c.stop()
