"""Where workers run (DESIGN §10): local processes, SSH hosts, Lium pods — one interface
(:class:`~relaytrain.providers.base.Provider`), one factory
(:func:`~relaytrain.providers.factory.make_provider`), and ``relay launch-stack``
(:mod:`relaytrain.providers.stack`).

The names below load on first use, so that importing one provider does not pay for the others
(``relay --help`` imports none: the commands in :mod:`relaytrain.cli.stack` import them inside).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CommandResult": "base", "Machine": "base", "Provider": "base", "ProviderError": "base",
    "RolloutLaunch": "base", "WorkerHandle": "base", "WorkerLaunch": "base", "make_provider": "factory",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
