"""``relay report``: one run as a single self-contained HTML file, to attach to a paper or a PR.

    relay report arith-sft --out report.html --png curves/

What it holds, all read from the commander's API (:func:`gather`): the run's summary and its
config (secrets redacted, :func:`relaytrain.config.redact_secrets`); a chart of every
metric against step, each attempt in its own colour and every hand-off marked at the step the
next attempt resumed from (superseded points left out: each step once); the attempts as a
timeline chart and a table; the durable checkpoints; the evaluations; the ledger.

Self-contained: the charts are inline SVG drawn by matplotlib (text as text), the styles one
inline ``<style>``; there is no script, no font and no link to fetch, so the file reads the same
offline and years later. ``--png DIR`` writes each metric's chart as a PNG too.

matplotlib is the ``[report]`` extra; it is imported only here, only when a report is drawn.
"""

from __future__ import annotations

import html
import io
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relaytrain.config import redact_secrets

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from relaytrain.api import models as m
    from relaytrain.api.client import RelayClient

CHART_POINTS = 2000
"""Points per series asked of the commander (downsampled there): more than a chart's width shows."""
_OUTCOME_COLOURS = {"succeeded": "#2e7d32", "preempted": "#f9a825", "failed": "#c62828", "cancelled": "#757575",
                    "lost": "#8e24aa", None: "#1565c0"}


@dataclass
class ReportData:
    """Everything a report shows, as the API answered it."""

    run: m.RunDetail
    checkpoints: list[m.CheckpointRef]
    ledger: m.RunLedger
    series: dict[str, list[m.MetricPoint]] = field(default_factory=dict)
    generated_at: float = 0.0


def gather(api: RelayClient, run_id: str, *, now: float) -> ReportData:
    """Read one run from the commander: detail, checkpoints, ledger and every metric series."""
    run = api.run(run_id)
    series: dict[str, list[m.MetricPoint]] = {}
    for point in api.metrics(run_id, max_points=CHART_POINTS).items:
        series.setdefault(point.name, []).append(point)
    return ReportData(run=run, checkpoints=api.checkpoints(run_id).items, ledger=api.ledger(run_id), series=series,
                      generated_at=now)


# -- charts ----------------------------------------------------------------------------------------


def _metric_figure(data: ReportData, name: str) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    by_epoch: dict[int, list[m.MetricPoint]] = {}
    for p in data.series[name]:
        by_epoch.setdefault(p.epoch, []).append(p)
    workers = {a.epoch: a.worker_id for a in data.run.attempts}
    for i, (epoch, points) in enumerate(sorted(by_epoch.items())):
        ax.plot([p.step for p in points], [p.value for p in points], color=f"C{i % 10}", linewidth=1.2,
                marker="." if len(points) < 50 else None, label=f"epoch {epoch} ({workers.get(epoch, '?')})")
    for attempt in data.run.attempts[1:]:
        ax.axvline(attempt.step_start, color="#555555", linestyle="--", linewidth=0.8)
        ax.annotate(f"hand-off → epoch {attempt.epoch}", (attempt.step_start, 1), xycoords=("data", "axes fraction"),
                    xytext=(3, -10), textcoords="offset points", fontsize=7, color="#555555")
    ax.set_title(name, fontsize=10, loc="left")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if len(by_epoch) > 1:
        ax.legend(fontsize=7, loc="best")
    return fig


def _timeline_figure(data: ReportData) -> Figure:
    """One lane per worker; a bar per attempt from grant to end (or now), coloured by outcome."""
    from matplotlib.figure import Figure

    attempts = data.run.attempts
    lanes = list(dict.fromkeys(a.worker_id for a in attempts))
    fig = Figure(figsize=(7.5, 0.6 + 0.45 * len(lanes)), layout="constrained")
    ax = fig.add_subplot()
    start = data.run.created_at
    for a in attempts:
        end = a.ended_at if a.ended_at is not None else data.generated_at
        y = lanes.index(a.worker_id)
        ax.barh(y, max(end - a.granted_at, 0.001), left=a.granted_at - start, height=0.5,
                color=_OUTCOME_COLOURS.get(a.outcome, "#1565c0"))
        ax.text(a.granted_at - start, y, f" e{a.epoch} {a.step_start}→{a.step_end if a.step_end is not None else '?'}"
                f" {a.outcome or 'running'}", va="center", fontsize=7)
    ax.set_yticks(range(len(lanes)), lanes, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the run was submitted")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _svg(fig: Figure, salt: str) -> str:
    """The figure as an inline ``<svg>`` element (no XML prolog; ids salted so charts never collide)."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def png_name(name: str, taken: set[str]) -> str:
    """A file name for metric ``name`` (``rollout/groups`` → ``rollout_groups.png``), unique in ``taken``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "metric"
    candidate, n = f"{stem}.png", 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}-{n}.png"
    taken.add(candidate)
    return candidate


def write_pngs(data: ReportData, folder: Path) -> list[Path]:
    """Each metric's chart as a PNG in ``folder`` (created); returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    written = []
    for name in sorted(data.series):
        path = folder / png_name(name, taken)
        _metric_figure(data, name).savefig(path, format="png", dpi=120)
        written.append(path)
    return written


# -- the page --------------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}th,td{border:1px solid #ddd;padding:.25em .5em;
text-align:left;vertical-align:top;overflow-wrap:anywhere}th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:1em}.chart svg{max-width:100%;height:auto}
pre{background:#f8f8f8;padding:.8em;overflow-x:auto;font-size:.8em}.muted{color:#777}
"""


def _time(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _num(value: float | None, fmt: str = "{:.3g}") -> str:
    return "-" if value is None else fmt.format(value)


def _table(table_id: str, header: list[str], rows: list[list[Any]], empty: str) -> str:
    if not rows:
        return f'<p class="muted" id="{table_id}">{html.escape(empty)}</p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if isinstance(c, int | float) else ""}>{html.escape(str(c))}</td>'
                         for c in row) + "</tr>"
        for row in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_html(data: ReportData) -> str:
    """The whole report as one HTML document."""
    run = data.run
    e = html.escape
    charts = "".join(
        f'<div class="chart metric" data-metric="{e(name)}">{_svg(_metric_figure(data, name), f"m{i}")}</div>'
        for i, name in enumerate(sorted(data.series))
    ) or '<p class="muted">no metrics reported</p>'
    timeline = (f'<div class="chart timeline">{_svg(_timeline_figure(data), "timeline")}</div>'
                if run.attempts else "")
    ledger = data.ledger
    by_epoch = {a.epoch: a for a in ledger.attempts}
    attempts = [[a.epoch, a.worker_id, by_epoch[a.epoch].provider if a.epoch in by_epoch else "-", _time(a.granted_at),
                 _time(a.ended_at), a.outcome or "running", a.failure_class or "-", a.step_start,
                 "-" if a.step_end is None else a.step_end, "-" if a.steps_lost is None else a.steps_lost,
                 a.resume_note or "", a.message or ""] for a in run.attempts]
    checkpoints = [[c.step, c.epoch, c.manifest_sha256, c.uri, _time(c.created_at)] for c in data.checkpoints]
    evals = [[ev.run_id, ev.dataset, ev.status, step, metric, value]
             for ev in run.evaluations for step, scores in sorted(ev.scores.items()) for metric, value in
             sorted(scores.items())]
    t = ledger.total
    totals = [[t.attempts, _num(t.wall_s, "{:.1f}"), _num(t.useful_s, "{:.1f}"), _num(t.ettr, "{:.3f}"),
               _num(t.gpu_hours, "{:.4f}"), _num(t.dollars, "{:.4f}"), t.steps_gained, t.steps_lost,
               _num(t.failover_mean_s, "{:.1f}")]]
    per_attempt = [[a.epoch, a.worker_id, a.provider, a.outcome or "running", _num(a.wall_s, "{:.1f}"),
                    a.steps_gained, a.steps_lost, _num(a.seconds_per_step, "{:.3f}"), _num(a.gpu_hours, "{:.4f}"),
                    _num(a.dollars, "{:.4f}"), _num(a.failover_s, "{:.1f}")] for a in ledger.attempts]
    config = json.dumps(redact_secrets(run.config), indent=2, sort_keys=True)
    handoffs = max(0, len(run.attempts) - 1)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>relay report: {e(run.run_id)}</title>
<style>{_STYLE}</style></head><body>
<h1>{e(run.run_id)} <span class="muted">({e(run.kind)})</span></h1>
<p id="summary">status <b>{e(run.status)}</b>; step {run.step} of {run.max_steps}; {len(run.attempts)} attempt(s),
{handoffs} hand-off(s); submitted {_time(run.created_at)}, finished {_time(run.finished_at)}.
<span class="muted">Report made {_time(data.generated_at)} by relaytrain.</span></p>
<h2>Metrics</h2>
<p class="muted">Each step once: points an attempt reported past the step the next attempt resumed from are left
out (<code>relay metrics {e(run.run_id)} --all</code> lists them). Dashed lines: hand-offs.</p>
<div class="charts">{charts}</div>
<h2>Attempts</h2>{timeline}
{_table("attempts", ["epoch", "worker", "provider", "granted", "ended", "outcome", "class", "from step", "to step",
                     "steps lost", "resume note", "message"], attempts, "no attempts yet")}
<h2>Durable checkpoints</h2>
{_table("checkpoints", ["step", "epoch", "manifest sha256", "uri", "created"], checkpoints, "no durable checkpoint")}
<h2>Evaluations</h2>
{_table("evaluations", ["eval run", "dataset", "status", "step", "metric", "value"], evals, "no evaluations")}
<h2>Ledger</h2>
{_table("ledger", ["attempts", "wall s", "useful s", "ETTR", "GPU-hours", "$", "steps gained", "steps lost",
                   "failover mean s"], totals, "no ledger")}
{_table("ledger-attempts", ["epoch", "worker", "provider", "outcome", "wall s", "steps gained", "steps lost",
                            "s/step", "GPU-hours", "$", "failover s"], per_attempt, "no attempts yet")}
<h2>Config</h2><pre id="config">{e(config)}</pre>
</body></html>
"""
