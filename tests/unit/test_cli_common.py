"""What every relay command shares (relaytrain.cli.common): the --label parser, fail, the JSON printer."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from relaytrain.cli import app
from relaytrain.cli.common import fail, parse_labels, print_json
from tests.support.cli import commands, flags


def test_labels_are_key_value_pairs():
    assert parse_labels([]) == {}
    assert parse_labels(["gpu=a100", "zone=", "expr=a=b"]) == {"gpu": "a100", "zone": "", "expr": "a=b"}


@pytest.mark.parametrize("bad", ["novalue", "=x"])
def test_a_bad_label_fails_naming_the_option(bad, capsys):
    with pytest.raises(typer.Exit) as raised:
        parse_labels(["ok=1", bad])
    assert raised.value.exit_code == 1
    assert capsys.readouterr().err.strip() == f"error: --label: expected KEY=VALUE, got {bad!r}"


@pytest.mark.parametrize("args", [
    ["worker", "--worker-id", "w1", "--label", "x"],
    ["hosts", "add", "h1", "--address", "a", "--key-path", "k", "--label", "x"],
])
def test_worker_and_hosts_add_refuse_a_bad_label_before_anything_else(args):
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200", "RELAY_COMMANDER": "http://127.0.0.1:9"})
    assert result.exit_code == 1
    assert "error: --label: expected KEY=VALUE, got 'x'" in result.output


def test_fail_always_raises_and_prints_the_message_as_is(capsys):
    message = "RUN_ID: must match ^[a-z0-9][a-z]{0,3}$ [bold]x[/bold]"
    with pytest.raises(typer.Exit) as raised:
        fail(message, code=3)
    assert raised.value.exit_code == 3
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_print_json_renders_what_json_lacks_as_text(capsys, tmp_path):
    print_json({"path": tmp_path, "n": [1, 2]})
    assert json.loads(capsys.readouterr().out) == {"path": str(tmp_path), "n": [1, 2]}


COMMANDER_COMMANDS = [list(path) for path, command in commands() if "--commander" in flags(command)]


def test_the_worker_the_rollout_worker_and_the_client_commands_take_commander():
    assert {"worker", "rollout-worker", "runs", "status", "submit"} <= {" ".join(c) for c in COMMANDER_COMMANDS}


@pytest.mark.parametrize("command", COMMANDER_COMMANDS, ids=" ".join)
def test_every_command_refuses_a_bad_commander_url_naming_it(command):
    """Checked before anything else (the command's own arguments are not even given here)."""
    result = CliRunner().invoke(app, [*command, "--commander", "http://127.0.0.1:9,notaurl"], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "'--commander'" in result.output and "'notaurl'" in result.output, result.output


def test_relay_commander_from_the_environment_is_checked_too():
    result = CliRunner().invoke(app, ["runs"], env={"COLUMNS": "200", "RELAY_COMMANDER": "http://a, ftp://b"})
    assert result.exit_code == 2
    assert "'ftp://b'" in result.output, result.output
