"""The commands about a run's curves: ``relay metrics`` (the series, as a table, CSV or JSON) and
``relay report`` (one self-contained HTML file, :mod:`relaytrain.report`)."""

from __future__ import annotations

import csv
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from .common import (
    DEFAULT_COMMANDER,
    CaCertOpt,
    CommanderOpt,
    JsonOpt,
    TokenOpt,
    bad_parameter,
    client,
    console,
    fail,
    print_json,
)
from .render import print_metrics
from .runs import RunIdArg

CSV_COLUMNS = ("step", "name", "value", "epoch", "superseded")


def metrics(
    run_id: RunIdArg,
    name: Annotated[str | None, typer.Option("--name", help="Comma-separated metric names, e.g. loss,reward; "
                                                          "default: all.")] = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV: step,name,value,epoch,superseded.")] = False,
    as_json: JsonOpt = False,
    all_points: Annotated[bool, typer.Option("--all", help="Also the points superseded by a hand-off (an attempt's "
                                                          "steps past where the next one resumed).")] = False,
    commander: CommanderOpt = DEFAULT_COMMANDER,
    ca_cert: CaCertOpt = None,
    token: TokenOpt = None,
) -> None:
    """Print a run's metric series across all its attempts: each step once, from the attempt whose
    training was kept. The table has a row per step and a column per metric."""
    if as_csv and as_json:
        bad_parameter("--csv and --json exclude each other", "'--csv' / '--json'")
    names = None if name is None else [part.strip() for part in name.split(",")]
    with client(commander, token, ca_cert) as api:
        points = api.metrics(run_id, names, include_superseded=all_points).items
    if as_json:
        print_json({"items": [p.model_dump(mode="json") for p in points]})
    elif as_csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(CSV_COLUMNS)
        out.writerows([p.step, p.name, repr(p.value), p.epoch, str(p.superseded).lower()] for p in points)
    else:
        print_metrics(run_id, points)


def report(
    run_id: RunIdArg,
    out: Annotated[Path, typer.Option("--out", help="The HTML file to write.")] = Path("report.html"),
    png: Annotated[Path | None, typer.Option("--png", help="Also write each metric's chart as a PNG into this "
                                                         "folder.")] = None,
    commander: CommanderOpt = DEFAULT_COMMANDER,
    ca_cert: CaCertOpt = None,
    token: TokenOpt = None,
) -> None:
    """Write one self-contained HTML report of a run (charts of every metric with hand-offs marked,
    the attempts, checkpoints, evaluations, ledger and config): no network needed to read it."""
    from relaytrain.report import gather, render_html, write_pngs

    _need_matplotlib()
    with client(commander, token, ca_cert) as api:
        data = gather(api, run_id, now=time.time())
    _write_atomically(out, render_html(data))
    console.print(f"wrote {out} ({len(data.series)} metric chart(s), {len(data.run.attempts)} attempt(s))")
    if png is not None:
        written = write_pngs(data, png)
        console.print(f"wrote {len(written)} PNG file(s) into {png}")


def _need_matplotlib() -> None:
    from importlib.util import find_spec

    if find_spec("matplotlib") is None:
        fail("relay report draws its charts with matplotlib: pip install 'relaytrain[report]'")


def _write_atomically(path: Path, text: str) -> None:
    """A temp file beside ``path``, fsynced, then renamed over it: never half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
