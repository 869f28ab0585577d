"""A worker can refuse ``kind: command`` runs (code from whoever may submit): ``relay worker
--no-command-runs`` claims every other kind and never a command run."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from relaytrain.config import parse_run_config
from relaytrain.config.stack import WorkerGroup
from relaytrain.providers.base import WorkerLaunch, worker_argv
from relaytrain.worker import WorkerSettings
from tests.integration.test_cli import relay
from tests.support.commander import wait_until
from tests.support.relay import counter_run


def _settings(tmp_path: Path, **extra) -> WorkerSettings:
    return WorkerSettings(commander="http://127.0.0.1:9", token=None, worker_id="w", workdir=tmp_path, **extra)


def test_a_worker_without_command_runs_claims_every_other_kind(store, tmp_path):
    store.submit_run(parse_run_config({"run_id": "code", "kind": "command", "max_steps": 5, "priority": 9,
                                       "trainer": {"command": ["python", "-c", "pass"]}}), now=1)
    store.submit_run(parse_run_config({"run_id": "shell", "kind": "command", "max_steps": 5, "priority": 9,
                                       "trainer": {"command": "python -c pass"}}), now=1)
    store.submit_run(parse_run_config({"run_id": "tune", "kind": "sft", "max_steps": 5}), now=2)
    refusing = _settings(tmp_path, command_runs=False)
    assert store.claim_run("careful", kinds=refusing.claim_kinds(), now=5)["run_id"] == "tune"
    assert store.claim_run("careful", kinds=refusing.claim_kinds(), now=5) is None
    assert _settings(tmp_path, kinds=["command", "sft"], command_runs=True).claim_kinds() == ["command", "sft"]
    assert _settings(tmp_path, kinds=["eval", "sft"], command_runs=False).claim_kinds() == ["eval", "sft"]
    assert _settings(tmp_path).claim_kinds() is None  # every kind
    assert store.claim_run("any", kinds=_settings(tmp_path).claim_kinds(), now=5)["run_id"] in ("code", "shell")


def test_a_relay_worker_with_no_command_runs_leaves_a_command_run_to_another(cluster):
    """The refusing worker claims again and again while the run waits; a worker that takes command
    runs then claims it at once (the run was claimable all along)."""
    cluster.client.submit(counter_run("code", cluster.store, max_steps=5, every=5, step_s=0.01))
    claims = _Claims(cluster.commander)
    before = claims()
    careful = cluster.worker("careful", None, "--no-command-runs", "--claim-wait", "0.2")
    wait_until(lambda: claims() >= before + 3, 60, f"the careful worker to claim ({careful.log()[-2000:]})")
    run = cluster.run("code")
    assert (run.status, run.holder, run.epoch) == ("queued", None, 0)
    cluster.worker("willing")
    done = cluster.wait_status("code", ("succeeded",))
    assert {a["worker_id"] for a in cluster.attempts()} == {"willing"}, done


class _Claims:
    """The commander's count of claim requests answered (Prometheus ``relay_claims_total``)."""

    def __init__(self, commander) -> None:
        self.commander = commander

    def __call__(self) -> float:
        text = httpx.get(f"{self.commander.url}/metrics",
                         headers={"Authorization": f"Bearer {self.commander.token}"}).text
        return float(re.search(r"^relay_claims_total (\S+)$", text, re.M).group(1))


def test_no_command_runs_contradicting_kind_command_is_refused(tmp_path):
    result = relay("worker", "--commander", "http://127.0.0.1:9", "--no-command-runs", "--kind", "command",
                   "--workdir", str(tmp_path / "w"), check=False)
    assert result.returncode == 1 and "--no-command-runs: contradicts --kind command" in result.stderr


def test_a_stack_worker_group_can_refuse_command_runs():
    group = WorkerGroup(name="pods", command_runs=False)
    launch = WorkerLaunch(worker_id="s-pods-0", commander_url="http://c", command_runs=group.command_runs)
    assert "--no-command-runs" in worker_argv("python", "local", launch)
    assert "--no-command-runs" not in worker_argv("python", "local", WorkerLaunch(worker_id="w", commander_url="c"))
    with pytest.raises(ValueError, match="command_runs: false contradicts kinds: \\[command\\]"):
        WorkerGroup(name="pods", command_runs=False, kinds=["command"])
