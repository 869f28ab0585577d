"""The reply rules of the OpenEnv protocol: what is an observation, what each error code costs."""

from __future__ import annotations

import json

import pytest

from relaytrain.envs import EpisodeFailed, FailureKind, StepResult
from relaytrain.envs.session import parse_reply
from relaytrain.envs.websocket import read_reply, ws_url
from relaytrain.errors import EnvironmentRejected

WHERE = "http://env:8001"


def reply(kind: str, data) -> str:
    return json.dumps({"type": kind, "data": data})


def test_an_observation_is_parsed():
    data = read_reply("step", reply("observation", {"observation": {"text": "=5\n"}, "reward": 0, "done": False}),
                      where=WHERE, task="t")
    assert parse_reply(data, WHERE) == StepResult(observation={"text": "=5\n"}, reward=0.0, done=False)
    assert parse_reply({"observation": {}, "reward": None, "done": True}, WHERE).reward is None
    assert parse_reply({"observation": {}, "reward": True, "done": True}, WHERE).reward == 1.0  # bool is a number


@pytest.mark.parametrize("data, why", [
    ([], "not an object"),
    ({"observation": "text", "reward": None, "done": False}, "the observation is str"),
    ({"reward": None, "done": False}, "the observation is NoneType"),
    ({"observation": {}, "reward": "garbled", "done": False}, "reward 'garbled'"),
    ({"observation": {}, "reward": float("nan"), "done": False}, "reward nan"),
    ({"observation": {}, "reward": 1.0}, "'done' is None"),
    ({"observation": {}, "reward": 1.0, "done": "yes"}, "'done' is 'yes'"),
])
def test_a_malformed_observation_is_malformed(data, why):
    with pytest.raises(EpisodeFailed) as caught:
        parse_reply(data, WHERE)
    assert caught.value.kind is FailureKind.MALFORMED and why in caught.value.message
    assert caught.value.where == WHERE and caught.value.reset_refusal is None


@pytest.mark.parametrize("raw, why", [
    ("<html>502 Bad Gateway</html>", "not JSON"),
    (json.dumps({"type": "state", "data": {}}), "not an observation"),
    (json.dumps(["observation"]), "not an observation"),
])
def test_a_reply_that_is_neither_observation_nor_error_is_malformed(raw, why):
    with pytest.raises(EpisodeFailed) as caught:
        read_reply("step", raw, where=WHERE, task="t")
    assert caught.value.kind is FailureKind.MALFORMED and why in caught.value.message


@pytest.mark.parametrize("code, kind", [
    ("EXECUTION_ERROR", FailureKind.SERVER_ERROR), ("SESSION_ERROR", FailureKind.SERVER_ERROR),
    ("FACTORY_ERROR", FailureKind.SERVER_ERROR), ("CAPACITY_REACHED", FailureKind.CAPACITY),
    ("SOMETHING_NEW", FailureKind.SERVER_ERROR),
])
def test_error_codes_that_a_retry_may_cure(code, kind):
    with pytest.raises(EpisodeFailed) as caught:
        read_reply("step", reply("error", {"message": "boom", "code": code}), where=WHERE, task="t")
    assert caught.value.kind is kind and f"{code}: boom" in str(caught.value) and WHERE in str(caught.value)
    assert caught.value.reset_refusal is None  # a step's failure is no refusal of the task


def test_a_reset_that_fails_carries_the_refusal_for_the_bad_task_rule():
    with pytest.raises(EpisodeFailed) as caught:
        read_reply("reset", reply("error", {"message": "bad task 'x'", "code": "EXECUTION_ERROR"}), where=WHERE,
                   task="x")
    assert caught.value.reset_refusal == "EXECUTION_ERROR: bad task 'x'"
    with pytest.raises(EpisodeFailed) as caught:
        read_reply("reset", reply("error", {"message": "full", "code": "CAPACITY_REACHED"}), where=WHERE, task="x")
    assert caught.value.reset_refusal is None  # no room is not a refusal of the task


@pytest.mark.parametrize("code", ["VALIDATION_ERROR", "INVALID_JSON", "UNKNOWN_TYPE"])
def test_an_invalid_request_is_rejected_at_once(code):
    with pytest.raises(EnvironmentRejected) as caught:
        read_reply("step", reply("error", {"message": "Invalid message", "code": code}), where=WHERE, task="7+8")
    assert str(caught.value) == f"{WHERE}: step of task 7+8 rejected: {code}: Invalid message"


def test_the_session_endpoint_of_a_url():
    assert ws_url("http://h:8001") == "ws://h:8001/ws"
    assert ws_url("https://envs.example.com/calc") == "wss://envs.example.com/calc/ws"


def test_the_package_imports_only_config_and_errors_of_relaytrain_and_no_openenv():
    import ast
    from pathlib import Path

    import relaytrain.envs

    imported: set[str] = set()
    for path in Path(relaytrain.envs.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    ours = {name for name in imported if name.split(".")[0] == "relaytrain"}
    assert ours == {"relaytrain.config", "relaytrain.errors"}
    assert not {name.split(".")[0] for name in imported} & {"openenv", "torch", "fastapi"}
