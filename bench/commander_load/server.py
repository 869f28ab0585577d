"""The benchmark's server: what ``relay serve`` runs, plus ``GET /bench/noop`` (the ceiling).

    python -m bench.commander_load.server --db DB --port PORT [--app-factory module:function]

Started by ``harness.BenchCommander`` (the token comes from ``RELAY_TOKEN``). Usable as a
uvicorn factory too: ``uvicorn --factory bench.commander_load.server:make_app`` (the database
and token then come from ``RELAY_DB`` and ``RELAY_TOKEN``).
"""

from __future__ import annotations

import argparse
import importlib
import os
from typing import Any

NOOP_PATH = "/bench/noop"
DEFAULT_FACTORY = "bench.commander_load.server:make_app"


def add_noop(app: Any) -> None:
    """Add ``GET /bench/noop``: no auth, no database, returns ``{}``."""

    @app.get(NOOP_PATH, include_in_schema=False)
    async def noop() -> dict:
        return {}


def make_app(db: str | None = None, token: str | None = None, sweep_interval_s: float = 5.0) -> Any:
    """The commander app as ``relay serve`` builds it, plus ``GET /bench/noop``."""
    from relaytrain.commander.app import create_app
    from relaytrain.commander.store import Store

    store = Store(db or os.environ["RELAY_DB"])
    store.upgrade()
    token = token if token is not None else (os.environ.get("RELAY_TOKEN") or None)
    app = create_app(store, admin_token=token, sweep_interval_s=sweep_interval_s)
    add_noop(app)
    return app


def main(argv: list[str] | None = None) -> None:
    """Serve the app of ``--app-factory`` on 127.0.0.1:``--port``, as ``relay serve`` does."""
    import logging

    import uvicorn

    p = argparse.ArgumentParser(prog="python -m bench.commander_load.server", description=__doc__.split("\n")[0])
    p.add_argument("--db", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sweep-interval", type=float, default=5.0)
    p.add_argument("--log-level", default="warning")
    p.add_argument("--app-factory", default=DEFAULT_FACTORY,
                   help="module:function(db, token, sweep_interval_s) -> app")
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module, _, name = a.app_factory.partition(":")
    factory = getattr(importlib.import_module(module), name)
    app = factory(a.db, os.environ.get("RELAY_TOKEN") or None, a.sweep_interval)
    # the same call as relaytrain.cli.serve
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level=a.log_level.lower(), access_log=False)


if __name__ == "__main__":
    main()
