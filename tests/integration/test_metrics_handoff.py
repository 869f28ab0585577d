"""One curve per run across a real ``kill -9`` hand-off: a commander, two ``relay worker``s and the
counter trainer; then ``relay metrics`` (table, CSV, JSON) and ``relay report`` read it back."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from html.parser import HTMLParser

import pytest

from tests.support.commander import wait_until
from tests.support.relay import counter_run

pytestmark = pytest.mark.slow
RUN = "curve"
STEPS = 60


def relay(cluster, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "RELAY_COMMANDER": cluster.commander.url,
           "RELAY_TOKEN": cluster.commander.token}
    result = subprocess.run([sys.executable, "-m", "relaytrain.cli", *args], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def cluster(module_cluster):
    """One cluster for the module: its tests read the one run back."""
    return module_cluster


@pytest.fixture(scope="module")
def handed_off(cluster) -> int:
    """The run, trained to the end across a kill -9 of its first holder (once for the module);
    returns the step the second attempt resumed from."""
    cluster.client.submit(counter_run(RUN, cluster.store, max_steps=STEPS, every=20, step_s=0.1))
    cluster.worker("a")
    cluster.worker("b")
    # Kill once the holder has reported steps past its newest durable checkpoint: those are retrained.
    wait_until(lambda: (r := cluster.run(RUN)).latest_checkpoint and r.latest_checkpoint.step >= 20
               and r.step >= r.latest_checkpoint.step + 3, 90, "steps reported past a durable checkpoint")
    cluster.holder(RUN).signal(signal.SIGKILL)
    run = cluster.wait_status(RUN, ("succeeded", "failed"))
    assert run.status == "succeeded", cluster.logs()
    assert [a.epoch for a in run.attempts] == [1, 2]
    return run.attempts[1].step_start


def test_each_step_once_superseded_points_kept(cluster, handed_off):
    resume = handed_off
    shown = cluster.client.metrics(RUN, "loss").items
    assert [p.step for p in shown] == list(range(1, STEPS + 1))
    assert [p.epoch for p in shown] == [1 if p.step <= resume else 2 for p in shown]
    assert not any(p.superseded for p in shown)

    every = cluster.client.metrics(RUN, "loss", include_superseded=True).items
    first_after_resume = sorted(p.step for p in every if p.epoch == 1 and p.step > resume)
    superseded = sorted(p.step for p in every if p.superseded)
    assert superseded, "the killed holder reported no step past its checkpoint"
    assert superseded == first_after_resume
    assert all(p.epoch == 1 for p in every if p.superseded)
    assert len(every) == STEPS + len(superseded)


def test_relay_metrics_formats(cluster, handed_off):
    resume = handed_off
    rows = list(csv.DictReader(io.StringIO(relay(cluster, "metrics", RUN, "--name", "loss", "--csv").stdout)))
    assert list(rows[0]) == ["step", "name", "value", "epoch", "superseded"]
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    assert all(float(r["value"]) == pytest.approx(1 / int(r["step"])) for r in rows)
    assert {r["superseded"] for r in rows} == {"false"}

    every = list(csv.DictReader(io.StringIO(relay(cluster, "metrics", RUN, "--name", "loss", "--csv", "--all").stdout)))
    superseded = [r for r in every if r["superseded"] == "true"]
    assert superseded and all(int(r["step"]) > resume and r["epoch"] == "1" for r in superseded)
    assert len(every) == STEPS + len(superseded)

    items = json.loads(relay(cluster, "metrics", RUN, "--json").stdout)["items"]
    assert {p["name"] for p in items} == {"loss", "state_prefix"}
    assert sorted(p["step"] for p in items if p["name"] == "loss") == list(range(1, STEPS + 1))

    table = relay(cluster, "metrics", RUN, "--name", "loss,state_prefix").stdout
    assert "state_prefix" in table and "superseded" not in table
    assert f"{STEPS} step(s)" in table
    assert "superseded" in relay(cluster, "metrics", RUN, "--all").stdout


class _Page(HTMLParser):
    """What the report's HTML holds: charts, tables (id → body rows), every URL it would fetch."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: list[dict[str, str]] = []
        self.rows: dict[str, int] = {}
        self.fetches: list[str] = []
        self.tags: set[str] = set()
        self._table: str | None = None
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "div" and "chart" in (a.get("class") or "").split():
            self.charts.append(a)
        if tag == "table":
            self._table = a.get("id")
            self.rows[self._table] = 0
        if tag == "tbody":
            self._in_body = True
        if tag == "tr" and self._in_body:
            self.rows[self._table] += 1
        for key in ("src", "href", "xlink:href"):
            if a.get(key) and not a[key].startswith("#"):
                self.fetches.append(a[key])

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False


def test_relay_report_is_self_contained(cluster, handed_off, tmp_path):
    out, pngs = tmp_path / "out" / "report.html", tmp_path / "pngs"
    relay(cluster, "report", RUN, "--out", str(out), "--png", str(pngs))
    text = out.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    metric_charts = [c for c in page.charts if "metric" in c["class"].split()]
    assert sorted(c["data-metric"] for c in metric_charts) == ["loss", "state_prefix"]
    assert any("timeline" in c["class"].split() for c in page.charts)
    assert text.count("hand-off → epoch 2") == len(metric_charts)  # every chart marks the hand-off
    assert page.rows["attempts"] == 2
    assert page.rows["checkpoints"] == len(cluster.client.checkpoints(RUN).items) > 0
    assert page.rows["ledger-attempts"] == 2 and page.rows["ledger"] == 1
    assert page.fetches == [] and "script" not in page.tags and "link" not in page.tags
    assert "svg" in page.tags
    files = sorted(p.name for p in pngs.iterdir())
    assert files == ["loss.png", "state_prefix.png"]
    assert all((pngs / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files)
