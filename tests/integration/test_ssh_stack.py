"""The ssh provider against a real OpenSSH server on a loopback port: hosts added with
``relay hosts add``, GPUs read by the commander's poller (an nvidia-smi stand-in on the remote
PATH prints a recorded 2-GPU machine), workers started over SSH by the autoscaler on free GPUs
(never twice the same), runs finishing, ``relay stack down`` stopping everything, by pid.
Hosts with a wrong key or a closed port are marked unreachable, with the error."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from relaytrain.cli.hosts import hosts_app
from relaytrain.cli.stack import launch_stack_command, stack_app
from relaytrain.commander.hosts import HostsSettings, poll_once
from relaytrain.commander.store import Store
from relaytrain.config import SshHostConfig
from relaytrain.providers import WorkerLaunch
from relaytrain.providers.ssh import SshProvider
from tests.support.commander import free_port, wait_until
from tests.support.relay import counter_run, process_alive
from tests.support.sshd import Sshd

ADMIN = "ssh-test-admin"


def cli() -> typer.Typer:
    """The commands as relaytrain.cli registers them."""
    app = typer.Typer()
    app.command("launch-stack")(launch_stack_command)
    app.add_typer(stack_app, name="stack")
    app.add_typer(hosts_app, name="hosts")
    return app


def relay(*args: str, env: dict | None = None) -> str:
    result = CliRunner().invoke(cli(), list(args), env={"COLUMNS": "250", **(env or {})})
    assert result.exit_code == 0, f"relay {' '.join(args)}: {result.output}\n{result.exception!r}"
    return result.output


@pytest.fixture
def sshd(tmp_path):
    server = Sshd(tmp_path / "sshd").start()  # skips without OpenSSH (fails under CI=true)
    yield server
    server.stop()


def test_poller_reads_gpus_and_marks_unreachable_hosts(tmp_path, sshd):
    store = Store(str(tmp_path / "relay.db"))
    store.upgrade()
    base = {"address": "127.0.0.1", "user": "root", "known_hosts": None, "labels": {}, "price_per_hour": None,
            "python": sys.executable, "workdir": str(tmp_path / "remote")}
    store.put_host("box", {**base, "port": sshd.port, "key_path": str(sshd.client_key)})
    store.put_host("wrong-key", {**base, "port": sshd.port, "key_path": str(sshd.root / "host_key")})
    store.put_host("closed", {**base, "port": free_port(), "key_path": str(sshd.client_key)})
    store.put_host("no-key", {**base, "port": sshd.port, "key_path": str(tmp_path / "missing")})
    results = asyncio.run(poll_once(store, HostsSettings(commander_url="http://127.0.0.1:1", connect_timeout_s=5)))
    assert {r["host"]: r["reachable"] for r in results} == {"box": True, "wrong-key": False, "closed": False,
                                                            "no-key": False}
    hosts = {h["name"]: h for h in store.list_hosts()}
    assert [(g["index"], g["name"], g["idle"]) for g in hosts["box"]["gpus"]] == \
        [(0, "NVIDIA A100-SXM4-80GB", True), (1, "NVIDIA A100-SXM4-80GB", True)]
    assert hosts["box"]["free_gpus"] == [0, 1] and hosts["box"]["last_error"] is None
    assert "Permission denied" in hosts["wrong-key"]["last_error"]
    assert "Connect call failed" in hosts["closed"]["last_error"] or "refused" in hosts["closed"]["last_error"]
    assert "no such key file" in hosts["no-key"]["last_error"]
    store.close()


def test_ssh_provider_starts_and_stops_a_worker(tmp_path, sshd):
    host = SshHostConfig(name="box", address="127.0.0.1", port=sshd.port, key_path=str(sshd.client_key),
                         python=sys.executable, workdir=str(tmp_path / "remote"))
    provider = SshProvider([host])
    machine = provider.create("box")
    handle = provider.start_worker(machine, WorkerLaunch(worker_id="box-w", commander_url=f"http://127.0.0.1:"
                                                         f"{free_port()}", gpus=[1]))
    try:
        assert provider.worker_alive(machine, handle)
        environ = Path(f"/proc/{handle.pid}/environ").read_bytes().split(b"\0")
        assert b"CUDA_VISIBLE_DEVICES=1" in environ and b"WORKER_ID=box-w" in environ
        assert provider.stop_worker(machine, handle, grace_s=20) in ("stopped", "killed")
        # "stopped" is said once the process no longer runs relaytrain: an exiting process has an empty
        # command line for the moment before it is a zombie.
        wait_until(lambda: not process_alive(handle.pid), 5, "the stopped worker to be gone")
    finally:
        if process_alive(handle.pid):
            os.kill(handle.pid, 9)


@pytest.fixture
def leftovers(tmp_path):
    """After the test, by pid: any worker under tmp_path/remote and the stack's commander."""
    yield tmp_path / "remote"
    pid_files = [*(tmp_path / "remote").glob("*/worker.pid"), tmp_path / ".relay-launch" / "commander.pid"]
    for pid_file in pid_files:
        if pid_file.exists() and process_alive(pid := int(pid_file.read_text())):
            os.kill(pid, signal.SIGKILL)


def test_autoscaler_over_ssh_then_stack_down(tmp_path, sshd, leftovers):
    remote = leftovers
    stack = tmp_path / "stack.yaml"
    stack.write_text(yaml.safe_dump({
        "name": "sshstack",
        "commander": {"port": free_port(), "token": ADMIN, "sweep_interval_s": 0.5,
                      "python_bin": str(sys.executable)},
        "provider": {"type": "ssh", "autoscale": True, "poll_interval_s": 0.5, "connect_timeout_s": 5},
    }))
    summary = json.loads(relay("launch-stack", str(stack)))
    commander = summary["commander"]
    env = {"RELAY_COMMANDER": commander["url"], "RELAY_TOKEN": ADMIN}
    common = ["--address", "127.0.0.1", "--python", sys.executable, "--workdir", str(remote)]
    relay("hosts", "add", "box1", "--port", str(sshd.port), "--key-path", str(sshd.client_key), "--label",
          "region=local", "--price-per-hour", "1.5", *common, env=env)
    relay("hosts", "add", "wrong-key", "--port", str(sshd.port), "--key-path", str(sshd.root / "host_key"),
          "--label", "region=local", *common, env=env)
    relay("hosts", "add", "closed", "--port", str(free_port()), "--key-path", str(sshd.client_key),
          "--label", "region=local", *common, env=env)

    def hosts() -> dict:
        return {h["name"]: h for h in json.loads(relay("hosts", "list", "--json", env=env))}

    wait_until(lambda: (h := hosts())["box1"]["reachable"] and h["wrong-key"]["reachable"] is False
               and h["closed"]["reachable"] is False, 60, "the poller to reach or fail every host")
    listed = hosts()
    assert listed["box1"]["free_gpus"] == [0, 1] and len(listed["box1"]["gpus"]) == 2
    assert "Permission denied" in listed["wrong-key"]["last_error"]
    table = relay("hosts", "list", env=env)
    assert "box1" in table and "NVIDIA A100-SXM4-80GB" in table and "no" in table

    from relaytrain.api.client import RelayClient

    client = RelayClient(commander["url"], ADMIN, retries=2)
    store_dir = tmp_path / "artifacts"
    for run_id in ("ssh-a", "ssh-b", "ssh-c"):
        client.submit(counter_run(run_id, store_dir, max_steps=30, resources={"labels": {"region": "local"}}))
    client.submit(counter_run("ssh-mars", store_dir, max_steps=10, resources={"labels": {"region": "mars"}}))
    for run_id in ("ssh-a", "ssh-b", "ssh-c"):
        wait_until(lambda r=run_id: client.run(r).status == "succeeded", 180,
                   f"{run_id} to succeed on a worker started over SSH (hosts: {hosts()})")
    assert client.run("ssh-mars").status == "queued", "no host carries region=mars"

    box = hosts()["box1"]
    started = box["workers"]
    gpus = [g for w in started for g in w["gpus"]]
    assert 1 <= len(started) <= 2 and len(gpus) == len(set(gpus)), f"GPUs handed out twice: {started}"
    assert not hosts()["wrong-key"]["workers"] and not hosts()["closed"]["workers"]
    registered = {w.worker_id: w for w in client.workers()}
    pids = []
    for w in started:
        assert process_alive(w["pid"]), w
        environ = Path(f"/proc/{w['pid']}/environ").read_bytes().split(b"\0")
        assert f"CUDA_VISIBLE_DEVICES={','.join(map(str, w['gpus']))}".encode() in environ
        info = registered[w["worker_id"]]
        assert info.provider == "ssh" and info.resources.labels == {"region": "local"}
        assert info.resources.price_per_hour == 1.5
        pids.append(w["pid"])
        pids += [int(p.read_text()) for p in Path(w["workdir"]).glob("runs/*/logs/attempt_*/trainer.pid")]
    assert client.health().status == "ok", "unreachable hosts did not hurt the commander"
    client.close()

    down = json.loads(relay("stack", "down", str(stack), "--grace", "30"))
    assert {w["worker_id"] for w in down["workers"]} == {w["worker_id"] for w in started}
    assert all(w["result"] in ("stopped", "killed") for w in down["workers"]), down
    assert down["commander"] in ("stopped", "killed")
    for pid in [*pids, commander["pid"]]:
        wait_until(lambda p=pid: not process_alive(p), 30, f"pid {pid} to be gone")
    assert not (tmp_path / ".relay-launch" / "stack.json").exists()
