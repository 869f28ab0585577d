"""``relay launch-stack`` with examples/stacks/local.yaml (a copy on free ports and tmp paths): a
commander and two workers come up, the counter run finishes, ``relay stack down`` leaves no
process behind — commander, workers and trainers, checked by pid."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from relaytrain.api.client import RelayClient
from relaytrain.cli.stack import launch_stack_command, stack_app
from tests.support.commander import free_port, wait_until
from tests.support.relay import counter_run, process_alive

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "stacks" / "local.yaml"
ADMIN = "local-stack-admin"


def relay(*args: str, ok: bool = True) -> str:
    app = typer.Typer()
    app.command("launch-stack")(launch_stack_command)
    app.add_typer(stack_app, name="stack")
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "250", "RELAY_TOKEN": ADMIN})
    assert (result.exit_code == 0) == ok, f"relay {' '.join(args)}: {result.output}\n{result.exception!r}"
    return result.output


@pytest.fixture
def stack_file(tmp_path):
    """The shipped example on a free port, its run a short counter run."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["commander"]["port"] = free_port()
    data["runs"] = [counter_run("local-counter", tmp_path / "artifacts", max_steps=40, every=10)]
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data))
    yield path
    launched = tmp_path / ".relay-launch"
    for pid_file in [*launched.glob("machines/*/worker.pid"), launched / "commander.pid"]:
        if pid_file.exists() and process_alive(pid := int(pid_file.read_text())):
            os.kill(pid, signal.SIGKILL)


def test_local_stack_up_run_down(stack_file, tmp_path):
    summary = json.loads(relay("launch-stack", str(stack_file)))
    commander = summary["commander"]
    assert commander["started"] and process_alive(commander["pid"])
    assert Path(commander["log_path"]).exists() and Path(commander["pid_path"]).read_text().strip() == \
        str(commander["pid"])
    workers = summary["workers"]
    assert [w["worker_id"] for w in workers] == ["local-cpu-0", "local-cpu-1"]
    for w in workers:
        assert process_alive(w["pid"]) and Path(w["log_path"]).exists() and w["machine"]["provider"] == "local"
        config = Path(w["config_path"])
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        text = config.read_text()
        assert f"RELAY_COMMANDER={commander['worker_url']}" in text and "RELAY_TOKEN=relay_w_" in text
        assert ADMIN not in text, "workers get a worker token, never the admin token"
    assert summary["runs"] == [{"run_id": "local-counter", "status": "submitted"}]

    with RelayClient(commander["url"], ADMIN) as client:
        run = wait_until(lambda: (r := client.run("local-counter")).status == "succeeded" and r, 120,
                         "the counter run to succeed")
        assert run.step == 40 and run.attempts[0].worker_id in ("local-cpu-0", "local-cpu-1")
        assert {w.worker_id for w in client.workers()} == {"local-cpu-0", "local-cpu-1"}

    status = json.loads(relay("stack", "status", str(stack_file)))
    assert status["commander"]["healthy"] and [w["alive"] for w in status["workers"]] == [True, True]
    assert all(w["registered"] for w in status["workers"]) and status["runs"][0]["status"] == "succeeded"
    again = relay("launch-stack", str(stack_file), ok=False)
    assert "already up" in again and "relay stack down" in again

    trainers = [int(p.read_text()) for w in workers for p in Path(w["workdir"]).glob("runs/*/logs/*/trainer.pid")]
    assert trainers, "the run's trainer pid was recorded"
    down = json.loads(relay("stack", "down", str(stack_file), "--grace", "30"))
    assert [w["result"] for w in down["workers"]] in (["stopped", "stopped"], ["stopped", "killed"],
                                                      ["killed", "stopped"], ["killed", "killed"])
    assert down["commander"] in ("stopped", "killed")
    for pid in [commander["pid"], *(w["pid"] for w in workers), *trainers]:
        wait_until(lambda p=pid: not process_alive(p), 10, f"pid {pid} to be gone after stack down")
    assert not (tmp_path / ".relay-launch" / "stack.json").exists()

    # Up again: the same database, the run is already there and done.
    summary = json.loads(relay("launch-stack", str(stack_file)))
    assert summary["runs"] == [{"run_id": "local-counter", "status": "exists"}]
    relay("stack", "down", str(stack_file), "--grace", "30")
    for pid in [summary["commander"]["pid"], *(w["pid"] for w in summary["workers"])]:
        wait_until(lambda p=pid: not process_alive(p), 10, f"pid {pid} to be gone after stack down")


def test_a_commander_that_cannot_start_is_reported_with_its_log(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        stack = tmp_path / "stack.yaml"
        stack.write_text(yaml.safe_dump({"commander": {"port": busy.getsockname()[1], "wait_s": 20}}))
        out = relay("launch-stack", str(stack), ok=False)
    assert "the commander exited" in out and "commander.log" in out


def test_a_bad_stack_file_names_the_field(tmp_path):
    stack = tmp_path / "stack.yaml"
    stack.write_text("provider: {type: local}\nworkers: [{name: w, count: 0}]\n")
    out = relay("launch-stack", str(stack), ok=False)
    assert "workers.0.count" in out and not (tmp_path / ".relay-launch").exists()
