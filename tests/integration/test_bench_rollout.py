"""The rollout pool's asynchronous benchmark keeps running: ``bench/rollout_async.py --quick`` (the
synchronous trainer, then the trainer with a rollout worker, from an SFT start point) exits 0, prints
its table, and both modes trained every group of the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_rollout_async_quick_prints_its_table(tmp_path):
    summary_file = tmp_path / "summary.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "rollout_async.py"), "--quick", "--json",
                             str(summary_file), "--keep", str(tmp_path / "work")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("mode "))
    assert [line.split()[0] for line in lines[header + 1 : header + 3]] == ["sync", "async"]
    assert any(line.startswith("speed-up, training (sync ÷ async):") for line in lines)
    summary = json.loads(summary_file.read_text())
    settings = summary["settings"]
    groups = settings["steps"] * settings["prompts"]
    for run in summary["runs"]:
        assert run["steps"] == settings["steps"], run
        assert run["trainer_groups"] + run["worker_groups"] >= groups, run
        assert "equal_time" in run, run
