"""Run-file validation: every bad field is named, every shipped example parses."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaytrain.config import load_run_config, parse_run_config, validate_run_id
from relaytrain.errors import ConfigError

EXAMPLES_DIR = Path(__file__).parents[2] / "examples"
STACK_FILES = {*EXAMPLES_DIR.glob("stacks/*.yaml"), *EXAMPLES_DIR.glob("stacks/*/stack.yaml")}  # test_stack_config
EXAMPLES = sorted(p for p in EXAMPLES_DIR.rglob("*.yaml") if p not in STACK_FILES)
"""Every other YAML file under examples/ is a run file."""
BASE = {"run_id": "r", "kind": "command", "max_steps": 10, "trainer": {"command": "python t.py"}}


def test_every_run_example_is_collected():
    assert {p.relative_to(EXAMPLES_DIR).as_posix() for p in EXAMPLES} >= {
        "runs/arith-sft.yaml", "runs/arith-grpo.yaml", "runs/counter.yaml", "trainers/slime/run.yaml",
        "trainers/slime/run-shell.yaml", "stacks/liveweb-arena/run.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.relative_to(EXAMPLES_DIR).as_posix())
def test_shipped_examples_parse(path):
    config = load_run_config(path)
    assert config.run_id == path.stem or config.run_id


def test_the_slime_examples_are_the_two_forms_of_one_command_run():
    argv, shell = (load_run_config(EXAMPLES_DIR / "trainers" / "slime" / n) for n in ("run.yaml", "run-shell.yaml"))
    assert argv.kind == shell.kind == "command"
    assert isinstance(argv.trainer.command, list) and isinstance(shell.trainer.command, str)
    assert "relay_slime.py" in " ".join(argv.trainer.command) and "relay_slime.py" in shell.trainer.command
    assert argv.trajectories.pattern == shell.trajectories.pattern == "rollout_{rollout_id}.pt"  # slime's own format


def test_defaults_follow_the_design():
    config = parse_run_config(BASE)
    assert (config.lease.ttl_s, config.lease.margin_s, config.lease.grace_s) == (60, 15, 10)
    assert config.lease.jeopardy_s == 600
    assert config.retry.max_retries == 3 and config.store.uri == "./artifacts"
    assert parse_run_config({**BASE, "store": "s3://b/p"}).store.uri == "s3://b/p"


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"checkpoint": {"every_steps": 0}}, "checkpoint.every_steps: Input should be greater than or equal to 1"),
        ({"max_steps": "many"}, "max_steps: Input should be a valid integer"),
        ({"kind": "rlhf"}, "kind: Input tag 'rlhf'"),
        ({"trainer": {}}, "trainer.command: Field required"),
        ({"trainer": {"command": "  "}}, "trainer.command: must not be empty"),
        ({"lease": {"ttl_s": 10}}, "lease: margin_s must be < 2/3 of ttl_s"),
        ({"lease": {"ttl_s": 60, "margin_s": 5, "grace_s": 6}}, "lease: grace_s must be < margin_s"),
        ({"lease": {"jeopardy_s": -1}}, "lease.jeopardy_s: Input should be greater than or equal to 0"),
        ({"lease": {"jeopardy_s": "long"}}, "lease.jeopardy_s: Input should be a valid number"),
        ({"retry": {"backoff_base_s": 10, "backoff_cap_s": 1}}, "retry: backoff_cap_s must be ≥ backoff_base_s"),
        ({"store": "gs://bucket"}, "store.uri: must be a path, file://, s3:// or hf:// URI"),
        ({"resources": {"gpus": -1}}, "resources.gpus: Input should be greater than or equal to 0"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
        ({"run_id": "../x"}, "run_id: must match"),
        ({"run_id": "a..b"}, "run_id: must not contain '..'"),
        ({"init_from": {"run": "a", "path": "b"}}, "init_from: give exactly one of 'run' or 'path'"),
    ],
)
def test_bad_fields_are_named(patch, expected):
    with pytest.raises(ConfigError) as info:
        parse_run_config({**BASE, **patch})
    assert expected in str(info.value)


def test_missing_kind_is_named():
    with pytest.raises(ConfigError, match="kind: Field required"):
        parse_run_config({"run_id": "r", "max_steps": 1})


def test_sft_data_needs_one_source():
    with pytest.raises(ConfigError, match="data: give exactly one of 'builtin' or 'path'"):
        parse_run_config({"run_id": "r", "kind": "sft", "max_steps": 1, "data": {"template": "r1"}})


@pytest.mark.parametrize(("workers", "expected"), [
    (-1, "rollout.workers: Input should be greater than or equal to 0"),
    (65, "rollout.workers: Input should be less than or equal to 64"),
    ("two", "rollout.workers: Input should be a valid integer"),
])
def test_rollout_workers_bounds_are_named(workers, expected):
    grpo = {"run_id": "r", "kind": "grpo", "max_steps": 1}
    assert parse_run_config({**grpo, "rollout": {"workers": 2}}).rollout.workers == 2
    with pytest.raises(ConfigError) as info:
        parse_run_config({**grpo, "rollout": {"workers": workers}})
    assert expected in str(info.value)


@pytest.mark.parametrize("bad", ["", "A", "-x", "x" * 129, "a/b", "a\x00b", "été", "a..b", "../x"])
def test_hostile_run_ids(bad):
    with pytest.raises(ValueError):
        validate_run_id(bad)


def test_load_reports_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_run_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("run_id: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_run_config(tmp_path / "list.yaml")
    (tmp_path / "zero.yaml").write_text("run_id: r\nkind: sft\nmax_steps: 5\ncheckpoint: {every_steps: 0}\n")
    with pytest.raises(ConfigError, match=r"zero.yaml:\ncheckpoint.every_steps"):
        load_run_config(tmp_path / "zero.yaml")


def test_backoff_doubles_up_to_the_cap():
    policy = parse_run_config({**BASE, "retry": {"backoff_base_s": 2, "backoff_cap_s": 10}}).retry
    assert [policy.backoff_s(n) for n in (1, 2, 3, 4, 5)] == [2, 4, 8, 10, 10]


SFT = {"run_id": "r", "kind": "sft", "max_steps": 10}


@pytest.mark.parametrize(("given", "expected"), [
    (None, []), ("none", []), ("wandb", ["wandb"]), ("tensorboard, mlflow", ["tensorboard", "mlflow"]),
    (["mlflow", "wandb", "tensorboard"], ["mlflow", "wandb", "tensorboard"]),
])
def test_report_to_takes_the_transformers_spellings(given, expected):
    config = parse_run_config({**SFT, **({} if given is None else {"report_to": given})})
    assert config.report_to == expected
    assert parse_run_config({**SFT, "kind": "grpo", "report_to": given or []}).report_to == expected


@pytest.mark.parametrize(("given", "message"), [
    ("comet", "report_to.0: Input should be 'tensorboard', 'wandb' or 'mlflow' (got 'comet')"),
    (["wandb", "neptune"], "report_to.1: Input should be 'tensorboard', 'wandb' or 'mlflow' (got 'neptune')"),
    ("wandb,wandb", "report_to: names a tracker twice"),
])
def test_an_unknown_or_repeated_tracker_is_named(given, message):
    with pytest.raises(ConfigError) as err:
        parse_run_config({**SFT, "report_to": given})
    assert message in str(err.value)


def test_report_to_is_for_the_built_in_trainers_only():
    with pytest.raises(ConfigError, match="report_to: Extra inputs are not permitted"):
        parse_run_config({**BASE, "report_to": "wandb"})


GRPO_ENV = {"run_id": "calc-rl", "kind": "grpo", "max_steps": 3}


def test_an_env_run_needs_no_data_and_no_reward_function():
    config = parse_run_config({**GRPO_ENV, "env": {"urls": ["http://127.0.0.1:8001/"]}})
    assert config.data is None and config.trainer.rewards == []
    assert config.env.urls == ["http://127.0.0.1:8001"]  # the trailing slash dropped
    named = parse_run_config({**GRPO_ENV, "env": {"module": "pkg.env:make"}, "data": {"builtin": "arithmetic"},
                              "trainer": {"rewards": [{"name": "correctness", "weight": 0.5}]}})
    assert named.data.builtin == "arithmetic" and named.trainer.rewards[0].weight == 0.5


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "env: give exactly one of 'urls' (OpenEnv servers) or 'module' (in-process)"),
    ({"urls": ["http://a:1"], "module": "m:f"}, "give exactly one of 'urls'"),
    ({"urls": ["ftp://a:1"]}, "env.urls: 'ftp://a:1' is not an http:// or https:// URL"),
    ({"urls": ["http://a:1", "http://a:1/"]}, "env.urls: names a URL twice"),
    ({"module": "not a path"}, "env.module: 'not a path' must read 'package.module:function'"),
    ({"urls": ["http://a:1"], "observation_template": "{unclosed"}, "env.observation_template: not a valid"),
    ({"urls": ["http://a:1"], "concurrency": 0}, "env.concurrency: Input should be greater than or equal to 1"),
    ({"urls": ["http://a:1"], "reward": "mean"}, "env.reward: Input should be 'final' or 'sum'"),
    ({"urls": ["http://a:1"], "down_timeout_s": 600}, "env.down_timeout_s (600) must be below hang_timeout_s (600)"),
])
def test_bad_env_fields_are_named(env, expected):
    with pytest.raises(ConfigError) as caught:
        parse_run_config({**GRPO_ENV, "env": env})
    assert expected in str(caught.value)


def test_a_run_without_env_still_needs_data_and_a_reward():
    with pytest.raises(ConfigError, match="trainer.rewards: at least one reward function"):
        parse_run_config({**GRPO_ENV, "trainer": {"rewards": []}})
    with pytest.raises(ConfigError, match="data: required unless the run has env"):
        parse_run_config({**GRPO_ENV, "data": None})
    with pytest.raises(ConfigError, match="rollout.generate: .nope. must read"):
        parse_run_config({**GRPO_ENV, "rollout": {"generate": "nope"}})
