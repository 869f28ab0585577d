"""A secret referenced by a run (``{from_worker_env: NAME}``) reaches the trainer from the worker's
own environment, and nothing the worker writes holds it; a worker without the variable fails the
run once, naming the variable and itself. Real workers, real trainers (an argv list and a shell
string), a real commander."""

from __future__ import annotations

import hashlib
import shlex
import stat
import sys
from pathlib import Path

import httpx
import pytest

from relaytrain.contract import RunLayout
from tests.support.relay import counter_run

CHECK = Path(__file__).resolve().parents[1] / "support" / "env_check_trainer.py"
SENTINEL = "wandb-sentinel-7c2e91d04b"


def checked_run(run_id: str, store: Path, shell: bool) -> dict:
    """A counter run whose trainer first checks that WANDB_API_KEY is the sentinel (by its hash)."""
    argv = [sys.executable, str(CHECK), f"WANDB_API_KEY={hashlib.sha256(SENTINEL.encode()).hexdigest()}"]
    run = counter_run(run_id, store, max_steps=6, every=3,
                      env={"WANDB_API_KEY": {"from_worker_env": "TEAM_WANDB_KEY"}})
    run["trainer"]["command"] = shlex.join(argv) if shell else argv
    return run


@pytest.mark.parametrize("shell", [False, True], ids=["argv", "shell"])
def test_a_referenced_secret_reaches_the_trainer_and_no_file_the_worker_writes(cluster, monkeypatch, shell):
    monkeypatch.setenv("TEAM_WANDB_KEY", SENTINEL)
    cluster.client.submit(checked_run("referenced", cluster.store, shell))
    w = cluster.worker("w")
    run = cluster.wait_status("referenced", ("succeeded", "failed"))
    assert run.status == "succeeded" and run.step == 6, (run.last_error, cluster.logs())

    root = RunLayout.in_workdir(w.workdir, "referenced").root
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    run_file = root / "run_config.json"
    assert stat.S_IMODE(run_file.stat().st_mode) == 0o600
    assert '"from_worker_env": "TEAM_WANDB_KEY"' in run_file.read_text()
    holding = [str(p) for p in [*w.workdir.rglob("*"), w.log_path] if p.is_file() and SENTINEL.encode() in
               p.read_bytes()]
    assert holding == [], "the referenced secret was written to disk"
    assert SENTINEL not in str(cluster.client.run("referenced").model_dump())


def test_a_variable_the_worker_lacks_fails_the_run_once_naming_it_and_the_worker(cluster, monkeypatch):
    monkeypatch.delenv("TEAM_WANDB_KEY", raising=False)
    cluster.client.submit(checked_run("unreferenced", cluster.store, shell=False))
    w = cluster.worker("w")
    run = cluster.wait_status("unreferenced", ("failed", "succeeded"))
    assert run.status == "failed" and run.retries_used == 0 and len(run.attempts) == 1
    expected = "worker w has no WANDB_API_KEY (from_worker_env: TEAM_WANDB_KEY) in its environment"
    assert expected in run.last_error and run.last_error.startswith("permanent failure"), run.last_error
    assert run.attempts[0].failure_class == "permanent" and expected in run.attempts[0].message
    logs = RunLayout.in_workdir(w.workdir, "unreferenced", 1).logs
    assert not (logs / "trainer.pid").exists(), "no trainer was started"


def test_submitting_an_inline_secret_is_a_422_naming_the_field_that_changes_nothing(commander):
    from tests.integration.test_api import table_snapshot

    run = counter_run("pasted", Path("artifacts"), env={"HF_TOKEN": SENTINEL})
    before = table_snapshot(commander.db)
    answer = httpx.post(f"{commander.url}/api/v1/runs", json=run,
                        headers={"Authorization": f"Bearer {commander.token}"})
    assert answer.status_code == 422 and SENTINEL not in answer.text, answer.text
    detail = answer.json()["detail"]
    assert detail.startswith("trainer.env: HF_TOKEN looks like a secret") and "{from_worker_env: HF_TOKEN}" in detail
    assert table_snapshot(commander.db) == before
    run["trainer"]["env"] = {"HF_TOKEN": {"from_worker_env": "HF_TOKEN"}}
    with commander.client() as client:
        assert client.submit(run).config["trainer"]["env"] == {"HF_TOKEN": {"from_worker_env": "HF_TOKEN"}}
