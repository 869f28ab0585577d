"""An asyncio event loop in a daemon thread, so that the synchronous trainer can run the pool's
coroutines: ``loop.run(pool.run_episode(...))`` blocks until the episode is over. Every coroutine
given to one ``EnvLoop`` runs on the same loop, so those run from several threads at once (or
gathered in one ``run``) share the pool's concurrency."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class EnvLoop:
    """An event loop running in its own daemon thread until :meth:`close`."""

    def __init__(self, name: str = "relay-envs") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and block until it is done; its result, or its exception re-raised.
        Past ``timeout`` seconds it is cancelled and ``TimeoutError`` raised."""
        if self._closed:
            if asyncio.iscoroutine(coro):
                coro.close()  # never to run: no "was never awaited" warning
            raise RuntimeError("the EnvLoop is closed")
        if threading.current_thread() is self._thread:
            raise RuntimeError("EnvLoop.run called from the loop's own thread would wait on itself forever")
        future = asyncio.run_coroutine_threadsafe(_awaited(coro), self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            if future.done():  # it finished just now, or raised a TimeoutError of its own
                return future.result()
            future.cancel()
            raise TimeoutError(f"{coro!r} did not finish within {timeout:g} s; it was cancelled") from None

    def close(self) -> None:
        """Cancel what still runs on the loop, stop it and join its thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        asyncio.run_coroutine_threadsafe(_cancel_others(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def _cancel_others() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
