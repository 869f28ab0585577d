"""A Lium stack through the SDK fake (tests/support/fake_lium.py), injected where the provider
would import ``lium``: pods are rented (up → wait_ready), the worker's configuration is uploaded,
the worker starts detached inside the pod's sandbox, the run finishes, and ``stack down
--remove-machines`` stops the workers and removes the pods. Everything else is real: the
commander, the workers, the trainer."""

from __future__ import annotations

import os
import signal
import sys

import pytest
import yaml

from relaytrain.api.client import RelayClient
from relaytrain.providers.stack import Stack, StackError
from tests.support.commander import free_port, wait_until
from tests.support.fake_lium import FakeLium
from tests.support.relay import counter_run, process_alive

ADMIN = "lium-stack-admin"


def write_stack(tmp_path, **provider) -> object:
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump({
        "name": "lium",
        "commander": {"port": free_port(), "token": ADMIN},
        "provider": {"type": "lium", "template_id": "relaytrain-worker", "gpu_type": "H100", "gpu_count": 1,
                     "volume": "new:name=relay-ckpt", "ttl": "2h", "python": sys.executable,
                     "remote_dir": "relay", **provider},
        "workers": [{"name": "h100", "count": 2, "env": {"HF_HOME": "hf"}, "register_timeout_s": 60}],
        "runs": [counter_run("lium-counter", tmp_path / "artifacts", max_steps=40)],
    }))
    return path


@pytest.fixture
def sdk(tmp_path):
    fake = FakeLium(tmp_path / "lium")
    yield fake
    for pod in list(fake.pods.values()):
        fake.rm(pod)
    pid = tmp_path / ".relay-launch" / "commander.pid"
    if pid.exists() and process_alive(int(pid.read_text())):
        os.kill(int(pid.read_text()), signal.SIGKILL)


def test_lium_stack_up_run_down(tmp_path, sdk):
    stack = Stack(write_stack(tmp_path), sdk=sdk)
    summary = stack.launch()
    pods = {p.name: p for p in sdk.ps()}
    assert sorted(pods) == ["lium-h100-0", "lium-h100-1"] and {p.status for p in pods.values()} == {"RUNNING"}
    assert all(p.removal_scheduled_at for p in pods.values()) and len(sdk.volume_list) == 1
    names = [name for name, _ in sdk.calls]
    assert names.index("up") < names.index("wait_ready") < names.index("upload") < max(
        i for i, n in enumerate(names) if n == "exec")
    for w in summary["workers"]:
        pod = pods[w["worker_id"]]
        assert w["machine"]["id"] == pod.id and w["config_path"] == f"relay/{w['worker_id']}/worker.env"
        assert "HF_HOME=hf" in (pod.root / w["config_path"]).read_text()
        assert w["pid"] in sdk.processes(pod), "the worker runs inside its pod"

    with RelayClient(summary["commander"]["url"], ADMIN) as client:
        wait_until(lambda: client.run("lium-counter").status == "succeeded", 120, "the run to succeed in a pod")
        assert {w.provider for w in client.workers()} == {"lium"}
    status = stack.status()
    assert [w["alive"] for w in status["workers"]] == [True, True]

    in_pods = [pid for pod in pods.values() for pid in sdk.processes(pod)]
    down = Stack(stack.path, sdk=sdk).down(remove_machines=True, grace_s=30)
    assert sorted(down["machines_removed"]) == ["lium-h100-0", "lium-h100-1"]
    assert {w["result"] for w in down["workers"]} <= {"stopped", "killed"}
    assert sdk.ps() == [] and sorted(n for n, _ in sdk.calls if n == "rm") == ["rm", "rm"]
    for pid in [*in_pods, summary["commander"]["pid"]]:
        wait_until(lambda p=pid: not process_alive(p), 10, f"pid {pid} to be gone after stack down")


def test_a_pod_that_never_gets_ready_fails_the_launch_and_is_removed(tmp_path, sdk):
    sdk.never_ready = True
    stack = Stack(write_stack(tmp_path, ready_timeout_s=5), sdk=sdk)
    with pytest.raises(StackError, match="not ready within 5s; removed"):
        stack.launch()
    assert sdk.ps() == []
    stack.down()
