"""The worker agent: claim loop, lease keeper, trainer supervisor, watchdog, GPU inventory.

It talks to the commander only through ``relaytrain.api`` and never imports the commander.
"""

from .agent import Worker, WorkerSettings

__all__ = ["Worker", "WorkerSettings"]
