"""An eval run under the worker (kind ``eval``): score each of a source run's durable
checkpoints in its own subprocess, with a timeout, and keep going past a failing one.

The worker fetches and verifies the checkpoints, then starts ``python -m relaytrain.evaluate.run``
with the contract of DESIGN §6 and ``RELAY_EVAL_CHECKPOINTS`` (a JSON list of checkpoint refs,
each with its local ``path`` or the ``error`` that made it unusable). For each step it writes::

    <run_root>/evals/<dataset>/step_<N:08d>/{metrics.json, completions.jsonl, summary.json}
    <run_root>/evals/<dataset>/consolidated_metrics.csv     one row per step, one column per metric

asks the worker (file events) to store them under the SOURCE run (``<source>/evals/<dataset>/…``),
and reports
each step's metrics as a progress line (``{"step": N, "metrics": {...}}``), which the
commander shows under the source run (``relay status SOURCE``).

Each step is scored by ``relaytrain.evaluate.score`` on the GPU in bfloat16 when the process sees
one (the eval run of a run that asked for GPUs asks for one: ``api.evals.build_eval_run``), else on
the CPU in float32, ``batch_size`` prompts at a time; its ``summary.json`` says which.

Public API: ``dataset_label``, ``write_consolidated``, ``score_step``, ``run_eval``, ``main``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from relaytrain.checkpoint import atomic_write_text, step_dir_name
from relaytrain.config import EvalRun, parse_run_config
from relaytrain.contract import CONSOLIDATED_METRICS, Contract, ExitCode, RunLayout
from relaytrain.errors import ConfigError, RelayError

log = logging.getLogger("relaytrain.evaluate")


def dataset_label(dataset: str) -> str:
    """A folder name for a dataset: its built-in name, or the file's stem."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", Path(dataset).stem if ("/" in dataset or "." in dataset) else dataset)


def write_consolidated(folder: Path, rows: dict[int, dict[str, Any]]) -> Path:
    """``consolidated_metrics.csv``: one row per step (sorted), one column per metric, plus status."""
    names = sorted({k for row in rows.values() for k in row if k not in ("status", "error")})
    path = folder / CONSOLIDATED_METRICS
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["step", *names, "status"])
    for step in sorted(rows):
        writer.writerow([step, *[rows[step].get(n, "") for n in names], rows[step]["status"]])
    atomic_write_text(path, table.getvalue())
    return path


def score_step(checkpoint: Path, trainer: Any, out: Path) -> dict[str, Any]:
    """Score one checkpoint in a subprocess; a failure or timeout is recorded in summary.json."""
    argv = [sys.executable, "-m", "relaytrain.evaluate.score", "--model", str(checkpoint),
            "--dataset", trainer.dataset, "--template", trainer.template, "--metrics", ",".join(trainer.metrics),
            "--max-new-tokens", str(trainer.max_new_tokens), "--batch-size", str(trainer.batch_size),
            "--out", str(out)]
    if trainer.samples:
        argv += ["--samples", str(trainer.samples)]
    if trainer.subset_frac:
        argv += ["--subset-frac", str(trainer.subset_frac)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=trainer.timeout_s)
    except subprocess.TimeoutExpired:
        return _failed(out, f"timed out after {trainer.timeout_s:g}s")
    if done.returncode != 0:
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or ["(no stderr)"]
        return _failed(out, f"exit {done.returncode}: {tail[0][:500]}")
    return {"status": "ok", **json.loads((out / "metrics.json").read_text())}


def _failed(out: Path, error: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "summary.json", json.dumps({"status": "failed", "error": error}, indent=1) + "\n")
    return {"status": "failed", "error": error}


def run_eval(config: EvalRun, refs: list[dict[str, Any]], contract: Contract) -> int:
    """Score each ref (a checkpoint the worker fetched and verified: ``path``, or the ``error``
    that made it unusable); report each step's metrics and hand the result files to the worker
    to store under the source run."""
    trainer = config.trainer
    folder = RunLayout(contract.run_root).evals(dataset_label(trainer.dataset))
    folder.mkdir(parents=True, exist_ok=True)
    prefix = f"evals/{folder.name}"
    rows: dict[int, dict[str, Any]] = {}
    for ref in sorted(refs, key=lambda r: r["step"]):
        if contract.should_stop():
            log.info("stopping (%s): leaving %d steps unscored", contract.stop_reason, len(refs) - len(rows))
            break
        step = ref["step"]
        out = folder / step_dir_name(step)
        if ref.get("path"):
            start = time.monotonic()
            rows[step] = score_step(Path(ref["path"]), trainer, out)
            log.info("step %d: %s in %.1fs", step, rows[step], time.monotonic() - start)
        else:
            rows[step] = _failed(out, f"checkpoint unusable: {ref.get('error', 'not fetched')}")
        consolidated = write_consolidated(folder, rows)
        numbers = {k: v for k, v in rows[step].items() if isinstance(v, float | int) and not isinstance(v, bool)}
        numbers["eval_ok"] = 1.0 if rows[step]["status"] == "ok" else 0.0
        contract.report_progress(step, numbers)
        for file in sorted(out.iterdir()):
            contract.report_file(file, trainer.source_run, f"{prefix}/{out.name}/{file.name}")
        contract.report_file(consolidated, trainer.source_run, f"{prefix}/{CONSOLIDATED_METRICS}")
    contract.close()
    failed = [s for s, row in rows.items() if row["status"] != "ok"]
    if failed:
        log.warning("failed steps: %s", ", ".join(map(str, failed)))
    if rows and len(failed) == len(rows):
        return ExitCode.TEMPFAIL  # nothing could be scored: retried
    return ExitCode.OK


def main() -> int:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        contract = Contract.from_env()
        if contract.run_config is None or contract.eval_checkpoints is None:
            raise ConfigError("RELAY_RUN_CONFIG and RELAY_EVAL_CHECKPOINTS: required for an eval run")
        config = parse_run_config(json.loads(contract.run_config.read_text()))
        refs = json.loads(contract.eval_checkpoints.read_text())
    except (OSError, ValueError, RelayError) as exc:
        print(f"ConfigError: eval run: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    if config.kind != "eval":
        print(f"ConfigError: kind: expected 'eval', got {config.kind!r}", file=sys.stderr)
        return ExitCode.CONFIG
    contract.install_signal_handlers()
    return run_eval(config, refs, contract)


if __name__ == "__main__":
    sys.exit(main())
