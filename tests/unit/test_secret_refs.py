"""Secrets are referenced in a run file, never pasted: an inline value named like a secret is
refused (naming the field and the fix), a reference or a value marked ``secret: false`` is
accepted, and a reference is resolved from the worker's environment only."""

from __future__ import annotations

import pytest

from relaytrain.config import FromWorkerEnv, NotSecret, parse_run_config, resolve_env, run_config_dict
from relaytrain.errors import ConfigError, WorkerEnvMissing

SENTINEL = "sk-live-4f1d9c0e7a"


def command_run(env: dict | None = None, **extra) -> dict:
    return {"run_id": "r", "kind": "command", "max_steps": 3, "trainer": {"command": "true", "env": env or {}},
            **extra}


def refused(data: dict) -> str:
    with pytest.raises(ConfigError) as err:
        parse_run_config(data)
    message = str(err.value)
    assert SENTINEL not in message, "an error must not carry the secret it refused"
    return message


@pytest.mark.parametrize("name", ["WANDB_API_KEY", "HF_TOKEN", "MY_SECRET", "DB_PASSWORD", "GCP_CREDENTIALS"])
def test_an_inline_value_named_like_a_secret_is_refused_naming_the_field_and_the_fix(name):
    message = refused(command_run({name: SENTINEL, "WANDB_MODE": "offline"}))
    assert message.startswith(f"trainer.env: {name} looks like a secret")
    assert f"{name}: {{from_worker_env: {name}}}" in message and "secret: false" in message


def test_a_reference_and_a_value_marked_not_secret_are_accepted_and_kept_as_written():
    env = {"WANDB_API_KEY": {"from_worker_env": "TEAM_WANDB_KEY"}, "MAX_TOKENS": {"value": "512", "secret": False},
           "WANDB_MODE": "offline", "HF_TOKEN": ""}
    config = parse_run_config(command_run(env))
    assert config.trainer.env == {"WANDB_API_KEY": FromWorkerEnv(from_worker_env="TEAM_WANDB_KEY"),
                                  "MAX_TOKENS": NotSecret(value="512", secret=False), "WANDB_MODE": "offline",
                                  "HF_TOKEN": ""}
    stored = run_config_dict(config)
    assert stored["trainer"]["env"] == env  # what the commander stores, and the worker validates again
    assert parse_run_config(stored) == config


@pytest.mark.parametrize(("value", "says"), [
    ({"from_worker_env": "1BAD"}, "'1BAD' is not an environment variable name"),
    ({"from_worker_env": "A-B"}, "'A-B' is not an environment variable name"),
    ({"value": "x", "secret": True}, "an inline value needs 'secret: false'"),
    ({"value": "x"}, "an inline value needs 'secret: false'"),
    ({"value": 8, "secret": False}, "value: must be a string"),
    ({"from": "X"}, "must be a string (quote a number: \"8\"), {from_worker_env: NAME} or {value: TEXT"),
    (8, "must be a string"),
])
def test_a_malformed_value_is_refused_with_the_three_spellings(value, says):
    message = refused(command_run({"WANDB_API_KEY": value}))
    assert message.startswith("trainer.env.WANDB_API_KEY: ") and says in message, message
    assert len(message.splitlines()) == 1


def test_a_variable_name_must_be_one_a_shell_can_set():
    assert "'bad-name' is not an environment variable name" in refused(command_run({"bad-name": "x"}))


@pytest.mark.parametrize(("extra", "where"), [
    ({"resources": {"labels": {"api_key": SENTINEL}}}, "resources: labels.api_key holds"),
    ({"store": {"uri": "s3://b/p", "endpoint_url": f"https://minio:{SENTINEL}@minio.lan:9000"}},
     "store: endpoint_url holds"),
    ({"store": f"s3://b/p?token={SENTINEL}"}, "store: uri holds"),
])
def test_a_secret_anywhere_else_in_the_run_file_is_refused_without_echoing_it(extra, where):
    message = refused(command_run(**extra))
    assert message.startswith(where) and "from_worker_env" in message, message


def test_environment_reset_arguments_and_urls_are_held_to_the_same_rule():
    grpo = {"run_id": "g", "kind": "grpo", "max_steps": 3}
    message = refused({**grpo, "env": {"urls": [f"http://env.lan?api_key={SENTINEL}"],
                                       "reset": {"password": SENTINEL, "max_tokens": 5}}})
    assert message.startswith("env: urls.0, reset.password holds"), message
    config = parse_run_config({**grpo, "env": {"module": "m.n:f", "reset": {"max_tokens": 5, "key": None}}})
    assert config.env.reset == {"max_tokens": 5, "key": None}  # numbers and nulls hold no secret


def test_resolve_reads_references_from_the_workers_environment_only():
    config = parse_run_config(command_run({"WANDB_API_KEY": {"from_worker_env": "TEAM_KEY"},
                                           "MAX_TOKENS": {"value": "8", "secret": False}, "MODE": "x"}))
    env = resolve_env(config.trainer.env, {"TEAM_KEY": SENTINEL, "OTHER": "y"}, worker_id="w1")
    assert env == {"WANDB_API_KEY": SENTINEL, "MAX_TOKENS": "8", "MODE": "x"}


def test_a_missing_worker_variable_names_every_one_and_the_worker():
    config = parse_run_config(command_run({"WANDB_API_KEY": {"from_worker_env": "TEAM_KEY"},
                                           "HF_TOKEN": {"from_worker_env": "HF_TOKEN"}}))
    with pytest.raises(WorkerEnvMissing) as err:
        resolve_env(config.trainer.env, {"HF_TOKEN": SENTINEL}, worker_id="gpu-box-1")
    message = str(err.value)
    assert message.startswith("worker gpu-box-1 has no WANDB_API_KEY (from_worker_env: TEAM_KEY) in its environment")
    assert "HF_TOKEN" not in message and SENTINEL not in message
