"""The environment client's benchmark keeps running: ``bench/env_client.py`` with few episodes (two
real ``server.py`` processes) exits 0, prints its table and writes every cell and ratio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_env_client_bench_prints_its_table(tmp_path):
    summary = tmp_path / "summary.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "env_client.py"), "--episodes", "20",
                             "--slow-episodes", "8", "--delay-s", "0.02", "--repeats", "1", "--json", str(summary)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert any(line.startswith("ws ÷ inproc episodes/s, delay 0 s, c1:") for line in result.stdout.splitlines())
    report = json.loads(summary.read_text())
    cells = {(r["form"], r["delay_s"], r["concurrency"]) for r in report["rows"]}
    assert cells == {(f, d, c) for f in ("inproc", "ws") for d in (0.0, 0.02) for c in (1, 8)}
    assert all(r["episodes_per_s"] > 0 for r in report["rows"])
    assert set(report["speedup_c_max_over_c1"]) == {"inproc, delay 0 s", "ws, delay 0 s", "inproc, delay 0.02 s",
                                                    "ws, delay 0.02 s"}
