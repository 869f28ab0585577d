"""A commander served over https with a certificate from ``relay tls init``, with real processes:
workers and the CLI verify it with ``--ca-cert`` (or RELAY_CA_CERT), refuse it without, and refuse a
certificate for another name; ``relay serve`` refuses plain http off loopback unless told."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import typer
import yaml
from typer.testing import CliRunner

from relaytrain import CA_CERT_ENV, TOKEN_ENV
from relaytrain.api.client import RelayClient
from relaytrain.cli.stack import launch_stack_command, stack_app
from relaytrain.tls import CA_CERT, SERVER_CERT, SERVER_KEY, client_context
from tests.support.commander import Commander, free_port, wait_until
from tests.support.relay import COUNTER, WorkerProc, counter_final_state, counter_run, process_alive

pytestmark = pytest.mark.slow


def relay(*args: str, env: dict | None = None, timeout_s: float = 120) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in (CA_CERT_ENV, TOKEN_ENV, "RELAY_COMMANDER")}
    return subprocess.run([sys.executable, "-m", "relaytrain.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, env={**base, "COLUMNS": "300", **(env or {})})


def tls_init(folder: Path, *names: str) -> Path:
    result = relay("tls", "init", str(folder), *names)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def test_openssl_verifies_the_chain_for_the_names(tmp_path):
    """Another implementation than the one that wrote it agrees: the chain verifies for the given names."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl binary")
    tls_init(tmp_path, "--host", "relay.example.org", "--ip", "203.0.113.7")

    def verify(*check: str) -> subprocess.CompletedProcess:
        return subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / CA_CERT), "-purpose", "sslserver",
                               *check, str(tmp_path / SERVER_CERT)], capture_output=True, text=True)

    assert verify("-verify_hostname", "relay.example.org").returncode == 0
    assert verify("-verify_ip", "203.0.113.7").returncode == 0
    assert verify("-verify_hostname", "evil.example.org").returncode != 0


@dataclass
class TlsCommander(Commander):
    """``relay serve --tls-cert --tls-key`` on 127.0.0.1, checked with the CA of ``tls``."""

    tls: Path | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.tls / CA_CERT

    def command(self) -> list[str]:
        return [*super().command(), "--tls-cert", str(self.tls / SERVER_CERT), "--tls-key", str(self.tls / SERVER_KEY)]

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"commander exited {self.proc.returncode}: {self.log_tail()}")
        try:
            return httpx.get(f"{self.url}/api/v1/health", timeout=1, verify=client_context(self.ca)).status_code == 200
        except httpx.TransportError:
            return False

    def client(self, token: str | None = None):
        return RelayClient(self.url, token if token is not None else self.token, retries=2, ca_cert=self.ca)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One https commander (SQLite; TLS does not touch the store) with the files of ``relay tls init``."""
    root = tmp_path_factory.mktemp("tls")
    commander = TlsCommander(db=str(root / "relay.db"), token="admin", workdir=root, tls=tls_init(root / "tls"))
    commander.start()
    yield commander
    commander.stop()


def test_a_worker_trains_over_https_with_the_ca(served, tmp_path):
    """Two counter runs, the trainer as an argv list and as a shell string, trained to the end by a
    real worker that verifies the commander with --ca-cert."""
    with served.client() as client:
        token = client.create_token("tls-workers").token
        store = tmp_path / "artifacts"
        argv = counter_run("tls-argv", store, max_steps=30, every=10)
        shell = counter_run("tls-shell", store, max_steps=30, every=10)
        shell["trainer"]["command"] = f"{shlex.quote(sys.executable)} {shlex.quote(str(COUNTER))}"
        client.submit(argv)
        client.submit(shell)
        worker = WorkerProc(served.url, token, "tls-w", tmp_path / "w", ["--ca-cert", str(served.ca)]).start()
        try:
            for run_id in ("tls-argv", "tls-shell"):
                run = wait_until(lambda r=run_id: (x := client.run(r)).status in ("succeeded", "failed") and x, 90,
                                 f"{run_id} to finish ({worker.log()[-2000:]})")
                assert run.status == "succeeded", worker.log()[-3000:]
                ref = run.latest_checkpoint
                state = json.loads((Path(ref.uri.removeprefix("file://")) / "state.json").read_text())
                assert state == {"step": 30, "state": counter_final_state(30)}
        finally:
            worker.stop()


def test_the_cli_verifies_with_the_ca_and_refuses_without_it(served):
    auth = {TOKEN_ENV: served.token}
    with_flag = relay("runs", "--commander", served.url, "--ca-cert", str(served.ca), "--json", env=auth)
    assert with_flag.returncode == 0, with_flag.stderr
    assert isinstance(json.loads(with_flag.stdout), dict | list)
    with_env = relay("runs", "--commander", served.url, "--json", env={**auth, CA_CERT_ENV: str(served.ca)})
    assert with_env.returncode == 0, with_env.stderr

    without = relay("runs", "--commander", served.url, env=auth)
    assert without.returncode == 1
    err = " ".join(without.stderr.split())
    assert "certificate verify failed" in err and served.url in err and "--ca-cert" in err
    assert "cannot reach" not in err

    plain = relay("runs", "--commander", served.url.replace("https://", "http://"), env=auth)
    assert plain.returncode == 1 and "use an https:// URL" in " ".join(plain.stderr.split())


def test_status_of_a_run_with_the_ca(served, tmp_path):
    with served.client() as client:
        client.submit(counter_run("tls-status", tmp_path / "artifacts", max_steps=10))
    result = relay("status", "tls-status", "--commander", served.url, "--ca-cert", str(served.ca), "--json",
                   env={TOKEN_ENV: served.token})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["run_id"] == "tls-status"


def test_a_ca_cert_that_is_no_certificate_names_the_flag(served, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    result = relay("runs", "--commander", served.url, "--ca-cert", str(junk), env={TOKEN_ENV: served.token})
    assert result.returncode == 1 and "--ca-cert" in result.stderr
    missing = relay("runs", "--commander", served.url, "--ca-cert", str(tmp_path / "nope.pem"))
    assert missing.returncode == 2 and "'--ca-cert'" in missing.stderr


def test_a_certificate_for_another_name_is_refused(tmp_path):
    """The commander at 127.0.0.1 shows a certificate made for other.example.org: clients that trust
    its CA still refuse it, the CLI and a worker alike, with the reason."""
    other = TlsCommander(db=str(tmp_path / "relay.db"), token="admin", workdir=tmp_path,
                         tls=tls_init(tmp_path / "tls", "--host", "other.example.org"))
    log = tmp_path / "serve.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(other.command(), stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, TOKEN_ENV: "admin"}, start_new_session=True)
    try:
        def listening() -> bool:
            assert proc.poll() is None, log.read_text()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", other.port)) == 0

        wait_until(listening, 30, "the commander to listen")
        cli = relay("runs", "--commander", other.url, "--ca-cert", str(other.ca), env={TOKEN_ENV: "admin"})
        assert cli.returncode == 1
        err = " ".join(cli.stderr.split())
        assert "certificate verify failed" in err and "127.0.0.1" in err and "mismatch" in err

        worker = relay("worker", "--commander", other.url, "--ca-cert", str(other.ca), "--token", "admin",
                       "--workdir", str(tmp_path / "w"), "--worker-id", "refused")
        assert worker.returncode == 1, worker.stderr[-2000:]
        assert "certificate verify failed" in " ".join(worker.stderr.split())

        rollout = relay("rollout-worker", "--commander", other.url, "--ca-cert", str(other.ca), "--token", "admin",
                        "--worker-id", "refused-rollout")
        assert rollout.returncode == 1, rollout.stderr[-2000:]
        assert "certificate verify failed" in " ".join(rollout.stderr.split())
    finally:
        proc.terminate()
        proc.wait(timeout=15)


# -- relay serve: TLS or an explicit --insecure-http off loopback ------------------------------------------


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def test_serve_off_loopback_without_tls_is_refused_and_binds_nothing(tmp_path):
    port = free_port()
    result = relay("serve", "--host", "0.0.0.0", "--port", str(port), "--token", "admin",
                   "--db", str(tmp_path / "x.db"), timeout_s=60)
    assert result.returncode == 1
    err = " ".join(result.stderr.split())
    assert "--host 0.0.0.0" in err and "in clear" in err and "relay tls init" in err and "--insecure-http" in err
    assert not (tmp_path / "x.db").exists() and port_is_free(port)


def test_serve_off_loopback_with_insecure_http_starts(tmp_path):
    commander = Commander(db=str(tmp_path / "x.db"), token="admin", workdir=tmp_path)
    commander.command = lambda: [sys.executable, "-m", "relaytrain.cli", "serve", "--host", "0.0.0.0",
                                 "--port", str(commander.port), "--db", commander.db, "--insecure-http"]
    commander.start()
    try:
        with commander.client() as client:
            assert client.health().status == "ok"
    finally:
        commander.stop()


@pytest.mark.parametrize(("args", "message"), [
    (["--tls-cert", "{tls}/server.pem"], "'--tls-key'"),
    (["--tls-key", "{tls}/server-key.pem"], "'--tls-cert'"),
    (["--tls-cert", "{tls}/server.pem", "--tls-key", "{tls}/server-key.pem", "--insecure-http"], "'--insecure-http'"),
    (["--tls-cert", "{tls}/nope.pem", "--tls-key", "{tls}/server-key.pem"], "'--tls-cert'"),
    (["--ca-cert", "{tls}/ca.pem"], "'--ca-cert'"),
])
def test_serve_bad_tls_flags_name_the_flag(tmp_path, args, message):
    tls = tls_init(tmp_path / "tls")
    result = relay("serve", "--db", str(tmp_path / "x.db"), "--port", str(free_port()),
                   *[a.format(tls=tls) for a in args], timeout_s=60)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "x.db").exists()


def test_serve_refuses_a_key_of_another_certificate(tmp_path):
    a, b = tls_init(tmp_path / "a"), tls_init(tmp_path / "b")
    port = free_port()
    result = relay("serve", "--db", str(tmp_path / "x.db"), "--port", str(port), "--tls-cert", str(a / SERVER_CERT),
                   "--tls-key", str(b / SERVER_KEY), timeout_s=60)
    assert result.returncode == 1
    assert "--tls-key" in result.stderr and "KEY_VALUES_MISMATCH" in result.stderr.replace("\n", "")
    assert not (tmp_path / "x.db").exists() and port_is_free(port)


# -- launch-stack: the commander over https, the CA copied to every worker ---------------------------------


def test_a_local_stack_serves_https_and_gives_its_workers_the_ca(tmp_path):
    def stack(*args: str) -> str:
        app = typer.Typer()
        app.command("launch-stack")(launch_stack_command)
        app.add_typer(stack_app, name="stack")
        result = CliRunner().invoke(app, list(args), env={"COLUMNS": "250", TOKEN_ENV: "tls-stack-admin"})
        assert result.exit_code == 0, f"relay {' '.join(args)}: {result.output}\n{result.exception!r}"
        return result.output

    tls_init(tmp_path / "tls")
    example = Path(__file__).resolve().parents[2] / "examples" / "stacks" / "local.yaml"
    data = yaml.safe_load(example.read_text())
    data["commander"].update(port=free_port(), tls_cert="tls/server.pem", tls_key="tls/server-key.pem",
                             ca_cert="tls/ca.pem")
    data["workers"] = [{**data["workers"][0], "count": 1}]
    data["runs"] = [counter_run("tls-stack", tmp_path / "artifacts", max_steps=20, every=10)]
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data))
    summary = json.loads(stack("launch-stack", str(path)))
    pids = [summary["commander"]["pid"], *(w["pid"] for w in summary["workers"])]
    try:
        assert summary["commander"]["url"].startswith("https://127.0.0.1:")
        (worker,) = summary["workers"]
        folder = Path(worker["config_path"]).parent
        assert (folder / CA_CERT).read_bytes() == (tmp_path / "tls" / CA_CERT).read_bytes()
        assert f"{CA_CERT_ENV}={CA_CERT}" in (folder / "worker.env").read_text()
        from relaytrain.api.client import RelayClient

        with RelayClient(summary["commander"]["url"], "tls-stack-admin", ca_cert=tmp_path / "tls" / CA_CERT) as c:
            run = wait_until(lambda: (r := c.run("tls-stack")).status in ("succeeded", "failed") and r, 120,
                             "the run to finish")
            assert run.status == "succeeded" and run.step == 20
        assert json.loads(stack("stack", "status", str(path)))["commander"]["healthy"]
        stack("stack", "down", str(path), "--grace", "30")
        for pid in pids:
            wait_until(lambda p=pid: not process_alive(p), 10, f"pid {pid} to be gone after stack down")
    finally:
        for pid in pids:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_worker_started_over_ssh_gets_the_ca_and_registers(served, tmp_path):
    """The ssh provider (a real OpenSSH server on loopback) copies the CA next to worker.env; the
    worker it starts verifies the https commander with it and registers."""
    from relaytrain.config import SshHostConfig
    from relaytrain.providers.base import WorkerLaunch
    from relaytrain.providers.ssh import SshProvider
    from tests.support.sshd import Sshd

    sshd = Sshd(tmp_path / "sshd").start()  # skips without OpenSSH (fails under CI=true)
    try:
        host = SshHostConfig(name="box", address="127.0.0.1", port=sshd.port, key_path=str(sshd.client_key),
                             python=sys.executable, workdir=str(tmp_path / "remote"))
        provider = SshProvider([host])
        machine = provider.create("box")
        with served.client() as client:
            token = client.create_token("ssh-tls").token
            handle = provider.start_worker(machine, WorkerLaunch(worker_id="ssh-tls-w", commander_url=served.url,
                                                                 token=token, ca_cert=str(served.ca)))
            try:
                folder = Path(handle.dir)
                assert (folder / CA_CERT).read_bytes() == served.ca.read_bytes()
                assert stat.S_IMODE((folder / CA_CERT).stat().st_mode) == 0o600
                wait_until(lambda: any(w.worker_id == "ssh-tls-w" for w in client.workers()), 60,
                           f"the worker to register ({folder / 'worker.log'})")
                assert provider.stop_worker(machine, handle, grace_s=20) in ("stopped", "killed")
            finally:
                if process_alive(handle.pid):
                    os.kill(handle.pid, signal.SIGKILL)
    finally:
        sshd.stop()
