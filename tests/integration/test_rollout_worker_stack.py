"""``relay launch-stack`` with a ``rollout_workers:`` group on the local provider: a real
``relay rollout-worker`` process starts with a rollout token (never the admin token), shows in
``relay stack status``, and ``relay stack down`` stops it (SIGTERM: it leaves and exits)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from relaytrain.cli.stack import launch_stack_command, stack_app
from tests.support.commander import free_port, wait_until
from tests.support.relay import process_alive

ADMIN = "rollout-stack-admin"


def relay(*args: str) -> dict:
    app = typer.Typer()
    app.command("launch-stack")(launch_stack_command)
    app.add_typer(stack_app, name="stack")
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "250", "RELAY_TOKEN": ADMIN})
    assert result.exit_code == 0, f"relay {' '.join(args)}: {result.output}\n{result.exception!r}"
    return json.loads(result.output)


@pytest.fixture
def stack_file(tmp_path):
    data = {"name": "rs", "commander": {"port": free_port()}, "provider": {"type": "local"},
            "rollout_workers": [{"name": "gen", "count": 1, "threads": 1, "run": "grpo-x", "labels": {"zone": "a"}}]}
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data))
    yield path
    launched = tmp_path / ".relay-launch"
    for pid_file in [*launched.glob("machines/*/worker.pid"), launched / "commander.pid"]:
        if pid_file.exists() and process_alive(pid := int(pid_file.read_text())):
            os.kill(pid, signal.SIGKILL)


def test_launch_stack_starts_rollout_workers_and_stack_down_stops_them(stack_file):
    summary = relay("launch-stack", str(stack_file))
    [worker] = summary["workers"]
    assert worker["worker_id"] == "rs-gen-0" and worker["role"] == "rollout-worker"
    config = Path(worker["config_path"]).read_text()
    assert "RELAY_TOKEN=" in config and ADMIN not in config, "a rollout token, never the admin token"
    log = Path(worker["log_path"])
    wait_until(lambda: "rollout worker rs-gen-0 started" in log.read_text(), 60, "the rollout worker to start")
    assert process_alive(worker["pid"])

    status = relay("stack", "status", str(stack_file))
    assert [(w["worker_id"], w["role"], w["alive"]) for w in status["workers"]] == [
        ("rs-gen-0", "rollout-worker", True)]

    down = relay("stack", "down", str(stack_file), "--grace", "30")
    assert [w["result"] for w in down["workers"]] == ["stopped"]
    wait_until(lambda: not process_alive(worker["pid"]), 10, "the rollout worker to be gone")
    assert "rollout worker rs-gen-0 stopped" in log.read_text()
