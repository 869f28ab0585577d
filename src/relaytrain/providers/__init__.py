"""Where workers run (DESIGN §10): local processes, SSH hosts, Lium pods — one interface
(:class:`~relaytrain.providers.base.Provider`), one factory
(:func:`~relaytrain.providers.factory.make_provider`), and ``relay launch-stack``
(:mod:`relaytrain.providers.stack`).
"""

from .base import CommandResult, Machine, Provider, ProviderError, WorkerHandle, WorkerLaunch
from .factory import make_provider

__all__ = ["CommandResult", "Machine", "Provider", "ProviderError", "WorkerHandle", "WorkerLaunch", "make_provider"]
