"""The ``relay`` CLI against a live commander, as a user types it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relaytrain.api import models as m


def relay(*args: str, commander=None, token: str | None = None, check: bool = True,
          cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    if commander is not None:
        env["RELAY_COMMANDER"] = commander.url
        env["RELAY_TOKEN"] = token if token is not None else commander.token
    result = subprocess.run([sys.executable, "-m", "relaytrain.cli", *args], capture_output=True, text=True,
                            timeout=120, env=env, cwd=cwd)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def run_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("run_id: cli-run\nkind: command\nmax_steps: 40\ntrainer: {command: 'python train.py'}\n")
    return path


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_submit_runs_status_cancel(commander, run_file):
    out = relay("submit", str(run_file), commander=commander).stdout
    assert "submitted cli-run (command, 40 steps): queued" in out
    assert "cli-run" in relay("runs", commander=commander).stdout
    with commander.client() as c:
        grant = c.claim(m.ClaimRequest(worker_id="w-cli", wait_s=0))
        c.release("cli-run", m.ReleaseRequest(worker_id="w-cli", epoch=grant.epoch, outcome="failed",
                                              failure_class="permanent", message="exit 78: bad dataset",
                                              stderr_tail="ValueError: no such dataset 'nope'"))
    status = relay("status", "cli-run", commander=commander).stdout
    assert "failed" in status and "w-cli" in status and "ValueError: no such dataset 'nope'" in status
    detail = json.loads(relay("status", "cli-run", "--json", commander=commander).stdout)
    assert detail["attempts"][0]["failure_class"] == "permanent"
    cancelled = relay("cancel", "cli-run", commander=commander, check=False)
    assert cancelled.returncode == 1 and "already ended failed" in cancelled.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bad_run_file_fails_at_submit_naming_the_field(commander, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_id: x\nkind: sft\nmax_steps: 5\ncheckpoint: {every_steps: 0}\n")
    result = relay("submit", str(bad), commander=commander, check=False)
    assert result.returncode == 1
    assert "checkpoint.every_steps" in result.stderr
    assert "x" not in [r["run_id"] for r in json.loads(relay("runs", "--json", commander=commander).stdout)["items"]]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_tokens_from_the_cli(commander, run_file):
    token = relay("token", "create", "--name", "gpu-box", commander=commander).stdout.strip()
    assert token.startswith("relay_w_")
    refused = relay("runs", commander=commander, token=token, check=False)
    assert refused.returncode == 1 and "cannot reach this endpoint" in refused.stderr
    wrong = relay("runs", commander=commander, token="nope", check=False)
    assert wrong.returncode == 1 and "unknown or revoked token" in wrong.stderr


def test_unreachable_commander_is_a_clear_error():
    from tests.support.commander import free_port

    env = {**os.environ, "RELAY_COMMANDER": f"http://127.0.0.1:{free_port()}"}
    result = subprocess.run([sys.executable, "-m", "relaytrain.cli", "runs"], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 1 and "cannot reach the commander" in result.stderr


def test_db_upgrade(tmp_path):
    from alembic.script import ScriptDirectory

    from relaytrain.commander.store.engine import MIGRATIONS_DIR

    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    out = relay("db", "upgrade", "--db", str(tmp_path / "fresh.db")).stdout
    assert f"is at revision {head}" in out
