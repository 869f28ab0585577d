"""Stack files (relay launch-stack): every shipped example parses, every bad field is named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from relaytrain.config import (
    LiumProviderConfig,
    SshProviderConfig,
    StackCommander,
    load_stack_config,
    parse_stack_config,
    stack_runs,
    ttl_seconds,
)
from relaytrain.errors import ConfigError

STACKS = Path(__file__).resolve().parents[2] / "examples" / "stacks"
EXAMPLES = sorted(STACKS.glob("*.yaml")) + sorted(STACKS.glob("*/stack.yaml"))
HOST = {"name": "box", "address": "10.0.0.1", "key_path": "~/.ssh/id"}
SSH = {"type": "ssh", "hosts": [HOST]}
LIUM = {"type": "lium", "template_id": "t", "gpu_type": "H100"}


def test_every_kind_of_example_is_shipped():
    assert {p.relative_to(STACKS).as_posix() for p in EXAMPLES} >= {
        "local.yaml", "ssh.yaml", "lium.yaml", "liveweb-arena/stack.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.relative_to(STACKS).as_posix())
def test_shipped_examples_parse_with_their_runs(path):
    config = load_stack_config(path)
    assert config.provider.type in ("local", "ssh", "lium")
    assert stack_runs(config, path.parent), "each example submits at least one run"


def test_the_local_example_is_two_workers_and_a_counter_run():
    config = load_stack_config(STACKS / "local.yaml")
    assert [(g.name, g.count) for g in config.workers] == [("cpu", 2)]
    assert config.commander.url == "http://127.0.0.1:8080" and config.commander.loopback


def test_the_liveweb_run_speaks_the_bridges_fields():
    """The run's env: names the action and observation fields that bridge.py serves."""
    import importlib.util
    import string

    folder = STACKS / "liveweb-arena"
    (run,) = stack_runs(load_stack_config(folder / "stack.yaml"), folder)
    spec = importlib.util.spec_from_file_location("liveweb_bridge", folder / "bridge.py")
    bridge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bridge)
    assert run.kind == "grpo" and run.env is not None and run.env.urls
    assert run.env.action_field in bridge.LiveWebAction.model_fields
    fields = {name for _, name, _, _ in string.Formatter().parse(run.env.observation_template) if name}
    assert fields and fields <= set(bridge.LiveWebObservation.model_fields) - {"done", "reward", "metadata"}
    assert run.env.concurrency == 8  # the bridge's --max-sessions default: one browser session per episode


def test_defaults():
    config = parse_stack_config({})
    assert config.name == "relay" and config.provider.type == "local" and config.workers == []
    assert (config.commander.port, config.commander.wait_s, config.commander.restart_if_running) == (8080, 30, False)
    ssh = parse_stack_config({"provider": SSH}).provider
    assert isinstance(ssh, SshProviderConfig) and ssh.hosts[0].port == 22 and ssh.hosts[0].user == "root"
    assert isinstance(parse_stack_config({"provider": LIUM}).provider, LiumProviderConfig)


def test_commander_urls():
    c = StackCommander(host="0.0.0.0", port=9000, insecure_http=True)
    assert c.url == "http://127.0.0.1:9000" and c.worker_url == c.url and not c.loopback
    c = StackCommander(host="0.0.0.0", public_url="http://10.1.2.3:9000/", insecure_http=True)
    assert c.worker_url == "http://10.1.2.3:9000"
    c = StackCommander(host="0.0.0.0", port=9000, tls_cert="tls/server.pem", tls_key="tls/server-key.pem",
                       public_url="https://relay.example.org:9000")
    assert (c.url, c.worker_url, c.tls) == ("https://127.0.0.1:9000", "https://relay.example.org:9000", True)
    assert StackCommander(host="::1", port=9000).url == "http://[::1]:9000"


@pytest.mark.parametrize(("fields", "expected"), [
    ({"host": "0.0.0.0"}, "commander: host 0.0.0.0 is not loopback: without TLS tokens would cross"),
    ({"tls_cert": "s.pem"}, "commander: tls_cert and tls_key go together"),
    ({"tls_key": "k.pem"}, "commander: tls_cert and tls_key go together"),
    ({"tls_cert": "s.pem", "tls_key": "k.pem", "insecure_http": True}, "insecure_http cannot be combined"),
    ({"tls_cert": "s.pem", "tls_key": "k.pem", "public_url": "http://10.0.0.5:8080"}, "public_url must be https://"),
])
def test_commander_tls_rules(fields, expected):
    with pytest.raises(ConfigError) as caught:
        parse_stack_config({"commander": fields})
    assert expected in str(caught.value)


@pytest.mark.parametrize(("ttl", "seconds"), [("45m", 2700), ("6h", 21600), ("2d", 172800), ("90s", 90)])
def test_ttl(ttl, seconds):
    assert ttl_seconds(ttl) == seconds


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"provider": {"root": "x"}}, "provider.type: Field required (one of: local, ssh, lium)"),
        ({"provider": {"type": "k8s"}}, "provider.type: Input tag 'k8s'"),
        ({"provider": {**SSH, "hosts": [{**HOST, "port": 0}]}}, "provider.hosts.0.port: Input should be greater"),
        ({"provider": {**SSH, "hosts": [{**HOST, "name": "a b"}]}}, "provider.hosts.0.name: must match"),
        ({"provider": {**SSH, "hosts": [HOST, HOST]}}, "provider.hosts: host names must be unique"),
        ({"provider": {**SSH, "hosts": [{"name": "x", "address": "h"}]}}, "provider.hosts.0.key_path: Field required"),
        ({"provider": {"type": "lium", "template_id": "t"}}, "provider: give 'executor' or 'gpu_type'"),
        ({"provider": {**LIUM, "volume": "vol-1"}}, "provider.volume: must be 'id:<HUID>' or 'new:name=<NAME>'"),
        ({"provider": {**LIUM, "ttl": "soon"}}, "provider.ttl: must be a positive duration"),
        ({"provider": {"type": "lium", "gpu_type": "H100"}}, "provider.template_id: Field required"),
        ({"commander": {"port": 70000}}, "commander.port: Input should be less than or equal to 65535"),
        ({"commander": {"public_url": "10.0.0.1:8080"}}, "commander.public_url: must start with http://"),
        ({"workers": [{"name": "a", "count": 0}]}, "workers.0.count: Input should be greater than or equal to 1"),
        ({"workers": [{"name": "a"}, {"name": "a"}]}, "workers: group names must be unique"),
        ({"workers": [{"name": "a", "host": "box"}]}, "workers.0.host: only an ssh provider has hosts"),
        ({"provider": SSH, "workers": [{"name": "a"}]}, "workers.0.host: must name one of provider.hosts"),
        ({"provider": SSH, "workers": [{"name": "a", "host": "box", "gpus": [0], "count": 2}]},
         "workers.0: 2 workers pinned to the same GPUs [0]"),
        ({"provider": SSH, "workers": [{"name": "a", "host": "box", "gpus": [0, 1]},
                                       {"name": "b", "host": "box", "gpus": [1]}]},
         "workers.1.gpus: GPU 1 of box is already a's"),
        ({"workers": [{"name": "a", "kinds": ["rlhf"]}]}, "workers.0.kinds.0: Input should be"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_bad_fields_are_named(data, expected):
    with pytest.raises(ConfigError) as info:
        parse_stack_config(data)
    assert expected in str(info.value)


def test_bad_inline_run_is_named_with_its_index(tmp_path):
    path = tmp_path / "stack.yaml"
    good = {"run_id": "ok", "kind": "command", "max_steps": 5, "trainer": {"command": "true"}}
    path.write_text(yaml.safe_dump({"runs": [good, {**good, "run_id": "bad", "max_steps": 0}]}))
    with pytest.raises(ConfigError) as info:
        load_stack_config(path)
    assert str(info.value).startswith(str(path)) and "runs.1.max_steps: Input should be greater" in str(info.value)


def test_run_files_are_relative_to_the_stack_file(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "r.yaml").write_text("run_id: r1\nkind: command\nmax_steps: 3\ntrainer: {command: 'true'}\n")
    (tmp_path / "stack.yaml").write_text("runs: [runs/r.yaml]\n")
    config = load_stack_config(tmp_path / "stack.yaml")
    assert [r.run_id for r in stack_runs(config, tmp_path)] == ["r1"]
    (tmp_path / "stack.yaml").write_text("runs: [runs/missing.yaml]\n")
    with pytest.raises(ConfigError, match=r"runs\.0: .*missing\.yaml: cannot read"):
        load_stack_config(tmp_path / "stack.yaml")


def test_duplicate_run_ids_are_refused(tmp_path):
    run = {"run_id": "same", "kind": "command", "max_steps": 5, "trainer": {"command": "true"}}
    (tmp_path / "stack.yaml").write_text(yaml.safe_dump({"runs": [run, run]}))
    with pytest.raises(ConfigError, match="runs: run ids must be unique"):
        load_stack_config(tmp_path / "stack.yaml")


def test_not_a_mapping(tmp_path):
    (tmp_path / "stack.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_stack_config(tmp_path / "stack.yaml")
