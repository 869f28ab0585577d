"""A commander process built with :func:`relaytrain.commander.app.create_app` settings that
``relay serve`` does not take, such as the token cache time (so a test of revocation need not
wait 30 s): ``python -m tests.support.app_server DB PORT AUTH_CACHE_S``; the admin token comes
from ``RELAY_TOKEN``, as for ``relay serve``."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from tests.support.commander import Commander


@dataclass
class AppCommander(Commander):
    """A :class:`Commander` whose tokens are trusted for ``auth_cache_s`` only."""

    auth_cache_s: float = 0.5

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tests.support.app_server", self.db, str(self.port), str(self.auth_cache_s)]


def main(db: str, port: str, auth_cache_s: str) -> None:
    import uvicorn

    from relaytrain.commander.app import create_app
    from relaytrain.commander.store import Store

    store = Store(db)
    store.upgrade()
    app = create_app(store, admin_token=os.environ.get("RELAY_TOKEN") or None, sweep_interval_s=0.2,
                     auth_cache_s=float(auth_cache_s))
    uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning", access_log=False)


if __name__ == "__main__":
    main(*sys.argv[1:])
