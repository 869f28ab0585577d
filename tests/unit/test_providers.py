"""The provider interface: worker configuration files, the worker command line, the factory and
``relay print-lium-command``. The providers against real processes and sockets (the local
provider starting a real ``relay worker``, an unreachable SSH host, commands in a Lium pod) are
in tests/integration/test_providers_processes.py."""

from __future__ import annotations

import sys

import pytest

from relaytrain.config import LiumProviderConfig, LocalProviderConfig, SshHostConfig, SshProviderConfig
from relaytrain.providers import ProviderError, WorkerLaunch, make_provider
from relaytrain.providers.base import parse_env_file, render_env_file, worker_argv, worker_env
from relaytrain.providers.lium import LiumProvider, lium_up_command
from relaytrain.providers.local import LocalProvider
from relaytrain.providers.ssh import SshProvider


def test_env_file_names_must_be_identifiers():
    with pytest.raises(ProviderError, match="'BAD-NAME' is not a valid environment variable name"):
        render_env_file({"BAD-NAME": "1"})


def test_parse_env_file():
    text = "# comment\n\nA=1\nexport B='two words'\nC=\"x=y\"\n"
    assert parse_env_file(text) == {"A": "1", "B": "two words", "C": "x=y"}
    with pytest.raises(ProviderError, match="line 2: expected KEY=VALUE"):
        parse_env_file("A=1\nnot a pair\n", source="w.env")


def test_worker_env_and_argv():
    launch = WorkerLaunch(worker_id="w-1", commander_url="http://c:8080", token="tok", labels={"region": "eu"},
                          kinds=["sft"], gpus=[2, 3], price_per_hour=1.5, max_runs=4, env={"HF_HOME": "/hf"},
                          claim_wait_s=1)
    env = worker_env(launch)
    assert env == {"HF_HOME": "/hf", "RELAY_COMMANDER": "http://c:8080", "WORKER_ID": "w-1",
                   "RELAY_WORKDIR": "work", "PYTHONUNBUFFERED": "1", "RELAY_TOKEN": "tok",
                   "CUDA_VISIBLE_DEVICES": "2,3"}
    argv = worker_argv("/py", "ssh", launch)
    assert argv[:6] == ["/py", "-m", "relaytrain.cli", "worker", "--provider", "ssh"]
    assert " ".join(argv[6:]) == ("--label region=eu --kind sft --max-runs 4 --price-per-hour 1.5 --claim-wait 1")
    assert "tok" not in argv, "the token travels in the config file, never on a command line"
    assert "CUDA_VISIBLE_DEVICES" not in worker_env(WorkerLaunch(worker_id="w", commander_url="u"))


def test_factory(tmp_path):
    local = make_provider(LocalProviderConfig(type="local", root="m"), base_dir=tmp_path)
    assert isinstance(local, LocalProvider) and local.root == tmp_path / "m" and local.python == sys.executable
    host = SshHostConfig(name="box", address="h", key_path="keys/id")
    ssh = make_provider(SshProviderConfig(type="ssh", hosts=[host]), base_dir=tmp_path)
    assert isinstance(ssh, SshProvider) and ssh.host("box").key_path == str(tmp_path / "keys" / "id")
    with pytest.raises(ProviderError, match="no host named 'nope'"):
        ssh.host("nope")
    lium = make_provider(LiumProviderConfig(type="lium", template_id="t", gpu_type="H100"), base_dir=tmp_path,
                         sdk=object())
    assert isinstance(lium, LiumProvider)


def test_lium_up_command():
    config = LiumProviderConfig(type="lium", template_id="relay-worker", gpu_type="H100", gpu_count=8,
                                volume="new:name=ckpt", ttl="6h")
    assert lium_up_command(config, pod_name="p0", env={"COMMANDER_URL": "http://c:8080"}) == [
        "lium", "up", "--gpu", "H100", "--count", "8", "--name", "p0", "--template_id", "relay-worker",
        "--volume", "new:name=ckpt", "--ttl", "6h", "-e", "COMMANDER_URL=http://c:8080", "--yes", "--no-ssh"]
    by_executor = LiumProviderConfig(type="lium", template_id="t", executor="brave-hawk-a1")
    assert lium_up_command(by_executor, pod_name="p")[:3] == ["lium", "up", "brave-hawk-a1"]


def test_without_the_lium_sdk_the_error_says_what_to_install():
    try:
        import lium  # noqa: F401
        pytest.skip("the Lium SDK is installed here")
    except ImportError:
        pass
    provider = LiumProvider(LiumProviderConfig(type="lium", template_id="t", gpu_type="H100"))
    with pytest.raises(ProviderError, match="pip install lium.io"):
        provider.create("pod")


# -- relay print-lium-command ----------------------------------------------------------------------


def _invoke(*args: str):
    import typer
    from typer.testing import CliRunner

    from relaytrain.cli.stack import print_lium_command

    app = typer.Typer()
    app.command("print-lium-command")(print_lium_command)
    app.command("unused")(lambda: None)  # two commands, so the name is required as with relay
    return CliRunner().invoke(app, ["print-lium-command", *args], env={"COLUMNS": "400"})


def test_print_lium_command_from_the_example_stack():
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "stacks" / "lium.yaml"
    result = _invoke(str(example))
    assert result.exit_code == 0, result.output
    line = " ".join(result.output.split())
    assert line.startswith("lium up --gpu H100 --count 1 --name relay-worker-0 --template_id relaytrain-worker")
    assert "--volume new:name=relay-checkpoints --ttl 12h" in line
    assert "-e COMMANDER_URL=https://203.0.113.10:8080 -e WORKER_ID=relay-worker-0" in line
    assert '--yes --no-ssh -e "RELAY_TOKEN=$RELAY_TOKEN" ' in line  # then the CA the pod needs (the stack serves TLS)
    assert line.endswith("examples/stacks/tls/ca.pem: copy it into the pod and set RELAY_CA_CERT to its path there "
                         "(docs/deploy.md, TLS)")


def test_print_lium_command_from_flags_and_bad_flags():
    result = _invoke("--template-id", "tpl", "--executor", "calm-lion-b2", "--pod-name", "p1",
                     "--commander-url", "http://1.2.3.4:8080")
    assert result.exit_code == 0, result.output
    assert " ".join(result.output.split()).startswith("lium up calm-lion-b2 --name p1 --template_id tpl")
    result = _invoke("--template-id", "tpl")
    assert result.exit_code == 1 and "give 'executor' or 'gpu_type'" in result.output
    result = _invoke("--template-id", "tpl", "--gpu", "H100", "--ttl", "forever")
    assert result.exit_code == 1 and "ttl" in result.output
