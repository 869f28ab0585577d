"""``relay metrics`` and ``relay report`` argument handling that needs no commander."""

from typer.testing import CliRunner

from relaytrain.cli import app
from relaytrain.report import png_name


def test_csv_and_json_exclude_each_other():
    result = CliRunner().invoke(app, ["metrics", "r", "--csv", "--json"])
    assert result.exit_code == 2
    assert "--csv and --json exclude each other" in result.output


def test_png_names_are_safe_and_unique():
    taken: set[str] = set()
    assert [png_name(n, taken) for n in ("loss", "rollout/groups", "rollout_groups", "../x", "")] == [
        "loss.png", "rollout_groups.png", "rollout_groups-2.png", "x.png", "metric.png"]
