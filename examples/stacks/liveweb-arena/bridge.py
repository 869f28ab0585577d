#!/usr/bin/env python3
"""An OpenEnv server (openenv-core) in front of a LiveWeb-Arena server, so that a relaytrain
GRPO run trains on LiveWeb-Arena with relaytrain's own environment client (``env:`` in the
run file): one OpenEnv session per episode, each mapped to one LiveWeb-Arena episode.

    pip install 'relaytrain[envs]'          # openenv-core, uvicorn, httpx
    python bridge.py --arena-url http://127.0.0.1:8000 --port 8010 --max-sessions 8

LiveWeb-Arena (AffineFoundation/liveweb-arena) does not speak the OpenEnv wire protocol of
openenv-core: its ``env.py`` ``Actor`` has ``reset(task_id, seed)``, ``step(action,
episode_id)`` and ``stop(episode_id)``, each returning an ``OpenEnvResponse`` of affinetes
(observation text, reward, done, truncated, episode_id, info), and it is served over HTTP by
affinetes' generic server. Everything this bridge assumes of that server is in ``ArenaClient``
(see README.md for what was read and where).

Failures keep their meaning: a LiveWeb-Arena server that is down, slow, answers an HTTP error
or loses the episode makes the OpenEnv call fail (so relaytrain retries the episode and never
trains it as reward 0), and the bridge's ``/health`` says unhealthy while the arena's does. An
action the arena cannot parse is the policy's doing: its observation and penalty come back as
a normal step.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any

import httpx
from openenv.core.env_server import Action, Environment, Observation, State, create_app
from pydantic import Field

ENVIRONMENT_FAULTS = frozenset({"no_episode_id", "episode_not_found", "episode_done", "cache_error"})
"""``info.error.type`` values of a LiveWeb-Arena step that are the environment's failure, not the
policy's (the episode was lost, or the live site's data could not be fetched): the step fails."""


class ArenaError(RuntimeError):
    """The LiveWeb-Arena server failed a call (down, timed out, an HTTP error, a lost episode)."""


class ArenaClient:
    """LiveWeb-Arena's HTTP API, as served by affinetes' generic server (its ``http_server.py``
    template, the image's ``CMD``): ``POST /call {"method", "args", "kwargs"}`` answers
    ``{"status": "success", "result": <OpenEnvResponse as a dict>}``; a server-side timeout
    answers ``{"status": "failed", "result": {"error": …}}``; an exception in the method is an
    HTTP 500; ``GET /health`` answers ``{"status": "ok"}``. Every assumption is here."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout_s)

    def call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        """Call ``Actor.<method>(**kwargs)`` and return its result; ArenaError on any failure."""
        try:
            response = self.http.post("/call", json={"method": method, "args": [], "kwargs": kwargs})
        except httpx.HTTPError as exc:
            raise ArenaError(f"LiveWeb-Arena {self.url} {method}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise ArenaError(f"LiveWeb-Arena {self.url} {method}: HTTP {response.status_code}: {response.text[:500]}")
        try:
            body = response.json()
        except ValueError as exc:
            raise ArenaError(f"LiveWeb-Arena {self.url} {method}: not JSON: {response.text[:200]!r}") from exc
        if not isinstance(body, dict) or body.get("status") != "success" or not isinstance(body.get("result"), dict):
            raise ArenaError(f"LiveWeb-Arena {self.url} {method}: {str(body)[:500]}")
        return body["result"]

    def healthy(self) -> bool:
        try:
            return self.http.get("/health", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self.http.close()


class LiveWebAction(Action):
    """One policy turn: the whole text the model wrote (LiveWeb-Arena parses the tool call in it)."""

    message: str = Field(..., description="The policy's text for this turn.")


class LiveWebObservation(Observation):
    """What the agent sees: the task and tools (first turn), the page's URL, title, accessibility
    tree and recent actions, as LiveWeb-Arena formats them."""

    text: str = Field("", description="LiveWeb-Arena's observation text.")


class LiveWebArenaEnv(Environment[LiveWebAction, LiveWebObservation, State]):
    """One OpenEnv session: at most one LiveWeb-Arena episode at a time, stopped on the next reset
    and when the session closes (so the arena's browser session is freed)."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self, arena_url: str, timeout_s: float) -> None:
        super().__init__()
        self.arena = ArenaClient(arena_url, timeout_s)
        self.episode_id: str | None = None
        self._state = State(episode_id=None, step_count=0)

    def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> LiveWebObservation:
        unknown = sorted(set(kwargs) - {"task_id"})
        if unknown:
            raise ValueError(f"reset: LiveWeb-Arena takes seed and task_id, not {', '.join(unknown)}")
        self._stop_episode()
        arguments: dict[str, Any] = {"seed": seed}
        if kwargs.get("task_id") is not None:
            arguments["task_id"] = int(kwargs["task_id"])
        result = self.arena.call("reset", **arguments)
        if not result.get("episode_id"):
            raise ArenaError(f"LiveWeb-Arena reset answered no episode_id: {str(result)[:300]}")
        self.episode_id = str(result["episode_id"])
        self._state = State(episode_id=episode_id or self.episode_id, step_count=0)
        return self._observation(result)

    def step(self, action: LiveWebAction, timeout_s: float | None = None, **kwargs: Any) -> LiveWebObservation:
        if self.episode_id is None:
            raise ValueError("step before reset: no LiveWeb-Arena episode in this session")
        result = self.arena.call("step", action=action.message, episode_id=self.episode_id)
        error = (result.get("info") or {}).get("error") or {}
        if error.get("type") in ENVIRONMENT_FAULTS:
            self.episode_id = None
            text = str(result.get("observation"))[:300]
            raise ArenaError(f"LiveWeb-Arena lost the episode ({error.get('type')}): {text}")
        self._state.step_count += 1
        return self._observation(result)

    @property
    def state(self) -> State:
        return self._state

    def close(self) -> None:
        self._stop_episode()
        self.arena.close()

    def _stop_episode(self) -> None:
        if self.episode_id is not None:
            episode, self.episode_id = self.episode_id, None
            try:
                self.arena.call("stop", episode_id=episode)
            except ArenaError as exc:  # the episode's browser session is the arena's to reap now
                print(f"bridge: stopping episode {episode} failed: {exc}", file=sys.stderr)

    @staticmethod
    def _observation(result: dict[str, Any]) -> LiveWebObservation:
        reward = result.get("reward")
        if not isinstance(reward, int | float) or isinstance(reward, bool):
            raise ArenaError(f"LiveWeb-Arena answered a reward that is not a number: {reward!r}")
        return LiveWebObservation(text=str(result.get("observation", "")), reward=float(reward),
                                  done=bool(result.get("done")), metadata={"info": result.get("info") or {}})


def make_app(arena_url: str, timeout_s: float, max_sessions: int) -> Any:
    """The bridge's FastAPI app: openenv-core's routes, with ``/health`` asking the arena too."""
    app = create_app(functools.partial(LiveWebArenaEnv, arena_url, timeout_s), LiveWebAction, LiveWebObservation,
                     env_name="liveweb_arena", max_concurrent_envs=max_sessions)
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != "/health"]
    probe = ArenaClient(arena_url, timeout_s)

    @app.get("/health")
    def health() -> Any:
        from fastapi.responses import JSONResponse

        if probe.healthy():
            return {"status": "healthy"}
        return JSONResponse({"status": "unhealthy", "detail": f"LiveWeb-Arena {arena_url} does not answer"}, 503)

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arena-url", required=True, help="the LiveWeb-Arena server (affinetes HTTP server)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--max-sessions", type=int, default=8,
                        help="OpenEnv sessions (episodes, each a browser session) at once: the run's env.concurrency")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="seconds one LiveWeb-Arena call may take")
    args = parser.parse_args(argv)
    if args.max_sessions < 1:
        parser.error("--max-sessions must be at least 1")
    import uvicorn

    uvicorn.run(make_app(args.arena_url, args.timeout_s, args.max_sessions), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
