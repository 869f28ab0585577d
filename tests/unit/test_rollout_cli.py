"""``relay rollout-worker``: its help, and bad arguments refused by name before anything starts."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from relaytrain.cli import app


def invoke(*args: str):
    return CliRunner().invoke(app, ["rollout-worker", *args], env={"COLUMNS": "200", "RELAY_TOKEN": ""})


def test_help_names_every_option():
    result = invoke("--help")
    assert result.exit_code == 0
    for option in ("--commander", "--token", "--worker-id", "--run", "--label", "--threads", "--max-groups",
                   "--streams", "--device"):
        assert option in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--worker-id", "bad id!"], "'--worker-id'"),
    (["--worker-id", "w1", "--run", "no spaces"], "'--run'"),
    (["--worker-id", "w1", "--threads", "0"], "'--threads'"),
    (["--worker-id", "w1", "--max-groups", "0"], "'--max-groups'"),
])
def test_bad_arguments_are_usage_errors_naming_the_option(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.output


def test_a_label_without_a_value_is_refused():
    result = invoke("--worker-id", "w1", "--labels", "zone=eu,gpu")
    assert result.exit_code == 1
    assert "--label: expected KEY=VALUE, got 'gpu'" in result.output
