"""The worker image's entrypoint (docker/entrypoint.sh), run directly — no Docker engine here —
with a PATH where ``relay`` is this virtual environment's, against a real commander; and the
image files linted (shellcheck; hadolint when installed)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.commander import Commander, wait_until
from tests.support.relay import counter_run, process_alive
from tests.support.requires import require_program

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
DOCKERFILE = REPO / "docker" / "Dockerfile"
VENV_BIN = Path(sys.executable).parent


def image_env(tmp_path: Path, **values: str) -> dict[str, str]:
    """A bare environment, as a container has: only what the image and `docker run -e` set."""
    return {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), **values}


def test_without_commander_url_it_fails_clearly(tmp_path):
    done = subprocess.run(["/bin/sh", str(ENTRYPOINT)], env=image_env(tmp_path), capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 78
    assert "COMMANDER_URL is not set" in done.stderr and "COMMANDER_URL=http://" in done.stderr


def test_without_relay_on_path_it_fails_clearly(tmp_path):
    env = {**image_env(tmp_path, COMMANDER_URL="http://127.0.0.1:1"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["/bin/sh", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 78 and "'relay' is not on PATH" in done.stderr


def test_the_entrypoint_runs_a_worker_that_finishes_a_run(tmp_path):
    commander = Commander(db=str(tmp_path / "relay.db"), token="entry-admin", workdir=tmp_path).start()
    client = commander.client()
    proc = None
    try:
        token = client.create_token("image", "worker").token
        workdir = tmp_path / "mnt-relay"
        env = image_env(tmp_path, COMMANDER_URL=commander.url, RELAY_TOKEN=token, RELAY_WORKDIR=str(workdir),
                        RELAY_PROVIDER="lium", RELAY_WORKER_ARGS="--label image=relaytrain --claim-wait 1")
        with open(tmp_path / "container.log", "wb") as log:
            proc = subprocess.Popen(["/bin/sh", str(ENTRYPOINT)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        hostname = socket.gethostname()
        info = wait_until(lambda: next((w for w in client.workers() if w.worker_id == hostname), None), 60,
                          f"the image's worker to register as {hostname}")
        assert info.provider == "lium" and info.resources.labels == {"image": "relaytrain"}
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert b"relaytrain" in cmdline or b"relay" in cmdline
        assert token.encode() not in cmdline, "the token is passed in the environment, not on the command line"
        client.submit(counter_run("from-image", tmp_path / "artifacts", max_steps=20,
                                  resources={"labels": {"image": "relaytrain"}}))
        wait_until(lambda: client.run("from-image").status == "succeeded", 120, "the run to succeed")
        assert (workdir / "runs" / "from-image").is_dir(), "RELAY_WORKDIR is where runs live"
        proc.send_signal(signal.SIGTERM)  # `docker stop`: tini passes SIGTERM to the exec'd worker
        assert proc.wait(timeout=60) == 0
        log = (tmp_path / "container.log").read_text()
        assert f"worker {hostname} serving {commander.url} from {workdir}" in log
    finally:
        if proc is not None and process_alive(proc.pid):
            proc.kill()
            proc.wait()
        client.close()
        commander.stop()


@pytest.fixture(params=["shellcheck", "hadolint"])
def linter(request) -> tuple[str, str]:
    """(tool, its path). CI installs shellcheck (.ci/run); hadolint is not packaged by apt and stays optional."""
    tool = request.param
    install = "apt-get install shellcheck" if tool == "shellcheck" else "https://github.com/hadolint/hadolint"
    return tool, require_program(tool, install, required_in_ci=tool == "shellcheck")


def test_image_files_lint_clean(linter):
    tool, binary = linter
    target = ENTRYPOINT if tool == "shellcheck" else DOCKERFILE
    args = [binary, "--shell=sh", str(target)] if tool == "shellcheck" else [binary, str(target)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dockerfile_takes_the_base_image_as_an_argument_and_installs_torch_first():
    text = DOCKERFILE.read_text()
    assert text.index("ARG BASE_IMAGE=") < text.index("FROM ${BASE_IMAGE}")
    assert text.index('"torch==${TORCH_VERSION}"') < text.index('pip install ".[train,s3,hf]"')
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/relay-entrypoint"]' in text
