"""A stand-in for LiveWeb-Arena's server (which needs Chromium, the network and API keys): the
HTTP API that affinetes serves for its ``Actor`` (``POST /call``, ``GET /health``), with the
reset/step/stop answers of LiveWeb-Arena's ``env.py``, over a scripted three-page "site".

    python -m uvicorn tests.support.fake_liveweb_arena:app --port 8000

A text action is a ``<tool_call>{"name": …, "arguments": …}</tool_call>``; ``goto`` earns 0.05,
anything unparsable -0.1 with ``info.error.type = action_parse``, ``stop`` ends the episode
(reward 0, as LiveWeb-Arena's). ``GET /episodes`` lists the open and stopped episodes, for tests.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

app = FastAPI(title="fake LiveWeb-Arena (affinetes HTTP API)")
EPISODES: dict[str, dict[str, Any]] = {}
STOPPED: list[str] = []
_CALL = re.compile(r"<tool_call>\s*(\{.*\})\s*</tool_call>", re.DOTALL)


class MethodCall(BaseModel):
    method: str
    args: list = []
    kwargs: dict = {}


def response(observation: str, episode_id: str | None = None, reward: float = 0.0, done: bool = False,
             info: dict | None = None) -> dict[str, Any]:
    return {"status": "success", "result": {"observation": observation, "reward": reward, "done": done,
                                            "truncated": False, "episode_id": episode_id, "info": info or {}}}


def reset(task_id: int | None = None, seed: int | None = None) -> dict[str, Any]:
    episode_id = uuid.uuid4().hex
    EPISODES[episode_id] = {"seed": seed, "task_id": task_id, "steps": 0}
    return response(f"Task for seed={seed} task_id={task_id}\nURL: about:blank", episode_id)


def step(action: str, episode_id: str | None = None) -> dict[str, Any]:
    episode = EPISODES.get(episode_id or "")
    if episode is None:
        return response(f"Episode {episode_id} not found. Call reset() first.", done=True,
                        info={"error": {"type": "episode_not_found", "retryable": True}})
    episode["steps"] += 1
    found = _CALL.search(action)
    try:
        call = json.loads(found.group(1)) if found else None
    except ValueError:
        call = None
    if not isinstance(call, dict) or call.get("name") not in ("goto", "stop"):
        return response("Action parse failed. Please provide a valid JSON action.", episode_id, -0.1,
                        info={"error": {"type": "action_parse", "retryable": True}})
    if call["name"] == "stop":
        return response("Task completed. Episode finished.", episode_id, 0.0, done=True)
    return response(f"URL: {call['arguments']['url']}\nStep {episode['steps'] + 1}/30", episode_id, 0.05)


def stop(episode_id: str | None = None) -> dict[str, Any]:
    if EPISODES.pop(episode_id or "", None) is not None:
        STOPPED.append(episode_id)
    return {"status": "success", "result": {"status": "ok", "stopped": True, "episode_id": episode_id}}


@app.post("/call")
def call(body: MethodCall) -> dict[str, Any]:
    methods = {"reset": reset, "step": step, "stop": stop}
    if body.method not in methods:
        raise HTTPException(404, f"Method not found: {body.method}")
    return methods[body.method](*body.args, **body.kwargs)


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/episodes")
def episodes() -> dict[str, Any]:
    return {"open": sorted(EPISODES), "stopped": STOPPED}
