"""An episode on an OpenEnv server, over its WebSocket endpoint ``/ws``: one connection is one
session is one environment (plain HTTP ``/reset`` and ``/step`` build a fresh environment per
request, so a multi-turn episode cannot use them).

The wire (openenv-core 0.3): the client sends ``{"type": "reset", "data": {...}}``,
``{"type": "step", "data": <action>}`` and ``{"type": "close"}``; each reset and step is answered
``{"type": "observation", "data": {"observation": {...}, "reward": ..., "done": ...}}`` or
``{"type": "error", "data": {"message": ..., "code": ...}}``. A server with no room answers the
first request ``CAPACITY_REACHED`` and closes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from relaytrain.config import EnvConfig

from .session import ERROR_CODES, CallRecorder, EpisodeFailed, FailureKind, _Session, describe, rejection

MAX_MESSAGE_BYTES = 32 << 20
"""The largest reply accepted (an observation may carry a web page); websockets' default is 1 MiB."""

CLOSE_TIMEOUT_S = 2.0
"""How long closing a session waits for the server's half of the closing handshake."""


def ws_url(url: str) -> str:
    """The session endpoint of the server at ``url`` (``http://h:p`` → ``ws://h:p/ws``)."""
    return "ws" + url.removeprefix("http") + "/ws"


class WebSocketSession(_Session):
    """An episode on the OpenEnv server at ``where`` (its http(s) URL). Open with :meth:`open`."""

    def __init__(self, where: str, task: str, config: EnvConfig, on_call: CallRecorder | None = None) -> None:
        super().__init__(where, task, config, on_call)
        self._ws: ClientConnection | None = None

    async def open(self) -> None:
        """Connect (the handshake counts against the turn timeout but not the episode's time).
        Refused, reset or timed out → ``CONNECT``; answered 5xx → ``SERVER_ERROR``; answered 4xx
        (no ``/ws`` here) → ``EnvironmentRejected``."""
        try:
            self._ws = await connect(ws_url(self.where), open_timeout=self._turn_timeout_s,
                                     max_size=MAX_MESSAGE_BYTES, compression=None,
                                     close_timeout=CLOSE_TIMEOUT_S)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status >= 500:
                raise EpisodeFailed(FailureKind.SERVER_ERROR, self.where,
                                    f"the WebSocket handshake was answered {status}") from exc
            raise self._rejected("the session", f"the WebSocket handshake at {ws_url(self.where)} was answered "
                                 f"{status}: not an OpenEnv server?") from exc
        except TimeoutError as exc:
            raise EpisodeFailed(FailureKind.CONNECT, self.where,
                                f"the WebSocket handshake took longer than {self._turn_timeout_s:g} s") from exc
        except (OSError, InvalidHandshake, ConnectionClosed) as exc:
            raise EpisodeFailed(FailureKind.CONNECT, self.where, f"cannot connect: {describe(exc)}") from exc

    async def close(self) -> None:
        """End the session: ask the server to close it and wait until it has (the server closes the
        connection after freeing the environment; closing first makes it log a disconnect error).
        A broken connection is just dropped."""
        ws, self._ws = self._ws, None
        if ws is None:
            return
        try:
            await ws.send(json.dumps({"type": "close"}))
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await ws.wait_closed()
        except (ConnectionClosed, OSError):  # already gone: nothing left to close
            ws.transport.abort()
        except TimeoutError:
            await ws.close()

    def drop(self) -> None:
        """Cut the connection at once, without the closing handshake (after a timeout)."""
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.transport.abort()

    async def _call(self, op: str, data: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        if self._ws is None:
            raise RuntimeError(f"{op} on a session that is not open")
        try:
            async with asyncio.timeout(timeout_s):
                try:
                    await self._ws.send(json.dumps({"type": op, "data": data}))
                except ConnectionClosed:
                    pass  # a server may answer and close first (CAPACITY_REACHED): recv still reads its answer
                raw = await self._ws.recv()
        except TimeoutError as exc:
            self.drop()
            raise EpisodeFailed(FailureKind.TIMEOUT, self.where, self._timeout_message(op, timeout_s)) from exc
        except (ConnectionClosed, OSError) as exc:
            self.drop()
            raise EpisodeFailed(FailureKind.CONNECT, self.where,
                                f"the connection was lost during {op}: {describe(exc)}") from exc
        return read_reply(op, raw, where=self.where, task=self.task)


def read_reply(op: str, raw: str | bytes, *, where: str, task: str) -> Any:
    """The ``data`` of an OpenEnv reply to ``op`` that is an observation (checked by
    :func:`~relaytrain.envs.session.parse_reply`); an error reply or anything else raises, classified
    by :data:`~relaytrain.envs.session.ERROR_CODES`."""
    try:
        message = json.loads(raw)
    except ValueError as exc:
        raise EpisodeFailed(FailureKind.MALFORMED, where, f"the {op} reply is not JSON: {raw[:200]!r}") from exc
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == "observation":
        return message.get("data")
    if kind != "error":
        raise EpisodeFailed(FailureKind.MALFORMED, where, f"the {op} reply is not an observation: {str(raw)[:200]!r}")
    error = message.get("data") if isinstance(message.get("data"), dict) else {}
    code, text = str(error.get("code")), str(error.get("message", ""))
    failure = ERROR_CODES.get(code, FailureKind.SERVER_ERROR)
    if failure is None:
        raise rejection(where, task, op, f"{code}: {text}")
    refusal = f"{code}: {text}" if op == "reset" and failure is FailureKind.SERVER_ERROR else None
    raise EpisodeFailed(failure, where, f"{op} failed: {code}: {text}", reset_refusal=refusal)
