"""The stack file's ``rollout_workers:`` groups: validated like worker groups, launched as
``relay rollout-worker`` with a rollout token."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from relaytrain.config import RolloutWorkerGroup, parse_stack_config
from relaytrain.errors import ConfigError
from relaytrain.providers.base import RolloutLaunch, WorkerLaunch, worker_argv, worker_env
from relaytrain.providers.stack import Stack


def test_rollout_worker_groups_parse_and_bad_fields_are_named():
    config = parse_stack_config({"workers": [{"name": "cpu"}],
                                 "rollout_workers": [{"name": "gen", "count": 2, "threads": 3, "run": "grpo-1",
                                                      "labels": {"zone": "eu"}}]})
    assert config.rollout_workers == [RolloutWorkerGroup(name="gen", count=2, threads=3, run="grpo-1",
                                                         labels={"zone": "eu"})]
    for bad, field in [({"name": "gen", "threads": 0}, "rollout_workers.0.threads"),
                       ({"name": "gen", "run": "Bad Run"}, "rollout_workers.0.run"),
                       ({"name": "gen", "host": "box"}, "rollout_workers.0.host"),
                       ({"name": "cpu"}, "group names must be unique")]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            parse_stack_config({"workers": [{"name": "cpu"}], "rollout_workers": [bad]})


def test_a_rollout_launch_starts_relay_rollout_worker():
    launch = WorkerLaunch(worker_id="s-gen-0", commander_url="http://c:8080", token="rtok", labels={"zone": "eu"},
                          gpus=[1], rollout=RolloutLaunch(threads=2, run_id="grpo-1"))
    argv = worker_argv("/py", "local", launch)
    assert argv == ["/py", "-m", "relaytrain.cli", "rollout-worker", "--threads", "2", "--run", "grpo-1",
                    "--label", "zone=eu"]
    env = worker_env(launch)
    assert env["RELAY_TOKEN"] == "rtok" and env["WORKER_ID"] == "s-gen-0" and env["CUDA_VISIBLE_DEVICES"] == "1"
    assert "rtok" not in argv


def test_the_stack_launches_rollout_workers_with_the_rollout_token(tmp_path: Path):
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "workers": [{"name": "cpu"}],
                                    "rollout_workers": [{"name": "gen", "count": 2, "env": {"A": "1"}}]}))
    launches = Stack(path).launches("wtok", "rtok")
    assert [(g, launch.worker_id, launch.token, launch.rollout is not None) for g, _, launch in launches] == [
        ("cpu", "s-cpu-0", "wtok", False), ("gen", "s-gen-0", "rtok", True), ("gen", "s-gen-1", "rtok", True)]
    assert launches[1][2].env["A"] == "1"
