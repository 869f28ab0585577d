"""Providers against real processes and sockets: a real shell reading a worker's env file, the
local provider running commands and starting, checking and stopping a real ``relay worker``
process, an SSH host nobody listens on, and commands run in a pod of the Lium SDK fake
(tests/support/fake_lium.py: its pods are folders with real processes). The providers' pure
parts are tested in tests/unit/test_providers.py and tests/unit/test_providers_lium.py."""

from __future__ import annotations

import os
import shlex
import signal
import stat
import subprocess

import pytest

from relaytrain.config import SshHostConfig
from relaytrain.providers import ProviderError, WorkerLaunch
from relaytrain.providers.base import render_env_file
from relaytrain.providers.lium import LiumProvider
from relaytrain.providers.local import LocalProvider
from relaytrain.providers.ssh import SshProvider
from tests.support.commander import free_port, wait_until
from tests.support.fake_lium import FakeLium, lium_config
from tests.support.relay import process_alive

TRICKY = {"PLAIN": "x", "SPACES": "bash /w/run.sh --flag", "QUOTES": "it's \"quoted\"", "DOLLAR": "$HOME;`id`"}


def test_env_file_survives_a_real_shell(tmp_path):
    path = tmp_path / "worker.env"
    path.write_text(render_env_file(TRICKY))
    out = subprocess.run(["/bin/sh", "-c", f"set -a; . {shlex.quote(str(path))}; set +a; env"], capture_output=True,
                         text=True, check=True).stdout
    for key, value in TRICKY.items():
        assert f"{key}={value}\n" in out


def test_ssh_without_asyncssh_or_host_fails_clearly(tmp_path):
    provider = SshProvider([SshHostConfig(name="box", address="127.0.0.1", port=free_port(),
                                          key_path=str(tmp_path / "none"))], connect_timeout_s=2)
    with pytest.raises(ProviderError, match=r"ssh root@127.0.0.1:\d+: "):
        provider.create("box")


# -- the local provider, with a real worker --------------------------------------------------------


def test_local_run_and_upload(tmp_path):
    provider = LocalProvider(tmp_path / "machines")
    machine = provider.create("m1")
    result = provider.run(machine, "pwd; echo oops >&2; exit 3")
    assert (result.exit_code, result.stdout.strip(), result.stderr.strip()) == (3, str(tmp_path / "machines"), "oops")
    with pytest.raises(ProviderError, match="exit 3: oops"):
        provider.check(machine, "echo oops >&2; exit 3")
    src = tmp_path / "a.env"
    src.write_text("A=1\n")
    provider.upload(machine, src, "w/a.env")
    target = tmp_path / "machines" / "w" / "a.env"
    assert target.read_text() == "A=1\n" and stat.S_IMODE(target.stat().st_mode) == 0o600


def test_local_worker_start_check_stop(tmp_path):
    """A worker whose commander is down keeps retrying: alive until stopped, by pid."""
    provider = LocalProvider(tmp_path / "machines")
    machine = provider.create("w-local")
    launch = WorkerLaunch(worker_id="w-local", commander_url=f"http://127.0.0.1:{free_port()}", token="tok",
                          labels={"zone": "a"}, gpus=[])
    handle = provider.start_worker(machine, launch)
    try:
        folder = tmp_path / "machines" / "w-local"
        assert handle.dir == str(folder) and handle.log_path == str(folder / "worker.log")
        assert (folder / "worker.pid").read_text().strip() == str(handle.pid)
        config = (folder / "worker.env").read_text()
        assert "RELAY_TOKEN=tok" in config and "CUDA_VISIBLE_DEVICES=''" in config
        assert stat.S_IMODE((folder / "worker.env").stat().st_mode) == 0o600
        assert provider.worker_alive(machine, handle)
        cmdline = open(f"/proc/{handle.pid}/cmdline", "rb").read().split(b"\0")
        assert b"relaytrain.cli" in cmdline and b"--label" in cmdline and b"zone=a" in cmdline
        environ = open(f"/proc/{handle.pid}/environ", "rb").read().split(b"\0")
        assert b"WORKER_ID=w-local" in environ and b"RELAY_TOKEN=tok" in environ
        assert provider.workers_alive(machine, [handle.pid, 999999]) == {handle.pid}
        wait_until(lambda: "retrying registration" in provider.tail_log(machine, handle), 60,
                   "the worker to say it cannot reach its commander")
        assert provider.stop_worker(machine, handle, grace_s=20) in ("stopped", "killed")
        assert not process_alive(handle.pid) and not provider.worker_alive(machine, handle)
        assert provider.stop_worker(machine, handle) == "gone"
    finally:
        if process_alive(handle.pid):
            os.kill(handle.pid, signal.SIGKILL)


def test_alive_check_ignores_a_pid_that_is_not_relaytrain(tmp_path):
    provider = LocalProvider(tmp_path)
    machine = provider.create("m")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert provider.workers_alive(machine, [sleeper.pid]) == set()
    finally:
        sleeper.kill()
        sleeper.wait()


# -- the lium provider, in pods of the SDK fake -------------------------------------------------


def test_lium_run_upload_remove(tmp_path):
    sdk = FakeLium(tmp_path)
    provider = LiumProvider(lium_config(), sdk=sdk)
    machine = provider.create("p")
    assert provider.run(machine, "echo $HOME; exit 4").exit_code == 4
    local = tmp_path / "w.env"
    local.write_text("A=1\n")
    provider.upload(machine, local, "relay/p/worker.env")
    pod = sdk.ps()[0]
    assert (pod.root / "relay" / "p" / "worker.env").read_text() == "A=1\n"
    assert oct((pod.root / "relay" / "p" / "worker.env").stat().st_mode & 0o777) == "0o600"
    provider.remove(machine)
    assert sdk.ps() == [] and ("rm", "p") in sdk.calls
    with pytest.raises(ProviderError, match="no pod named p"):
        provider.run(machine, "true")


def test_lium_sdk_errors_are_wrapped(tmp_path):
    sdk = FakeLium(tmp_path)
    provider = LiumProvider(lium_config(), sdk=sdk)
    machine = provider.create("p")
    local = tmp_path / "f"
    local.write_text("x")
    with pytest.raises(ProviderError, match="lium: upload to p:/tmp/x failed: ValueError: /tmp/x is outside"):
        provider.upload(machine, local, "/tmp/x")
