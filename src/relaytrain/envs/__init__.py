"""Environment clients (DESIGN §11): episodes against OpenEnv servers over their WebSocket
sessions, or against a Python environment run in-process, with the pool that spreads them over
replicas, retries a failed episode elsewhere and counts what failed.

    pool = open_pool(config.env)            # EnvConfig: urls or module
    await pool.start()
    result = await pool.run_episode(play, task="seed 7")   # play(session) -> anything
    pool.metrics()                          # env/episodes, env/retries, env/failures/<kind>, ...

Torch-free; imports of relaytrain only ``config`` and ``errors``.
"""

from .inprocess import InProcessSession
from .loop import EnvLoop
from .pool import EnvPool, open_pool
from .session import EnvSession, EpisodeFailed, FailureKind, StepResult
from .websocket import WebSocketSession

__all__ = ["EnvLoop", "EnvPool", "EnvSession", "EpisodeFailed", "FailureKind", "InProcessSession", "StepResult",
           "WebSocketSession", "open_pool"]
