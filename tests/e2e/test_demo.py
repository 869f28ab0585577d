"""The README's main command, end to end: `relay demo` trains, hands off, learns, and cleans up."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.relay import process_alive

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow


def test_relay_demo_learns_and_survives_a_kill(tmp_path):
    root = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "relaytrain.cli", "demo", "--root", str(root), "--eval-samples", "200"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "120"},
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]
    assert "kill -9" in out and "hand-offs: 1" in out
    assert "the models learned" in out
    assert (root / "artifacts" / "demo-sft" / "checkpoints").is_dir()
    assert (root / "artifacts" / "demo-grpo" / "checkpoints").is_dir()
    pids = [int(p.read_text()) for p in root.glob("workers/*/runs/*/logs/attempt_*/trainer.pid")]
    assert pids and not any(process_alive(pid) for pid in pids), "the demo left a trainer running"
