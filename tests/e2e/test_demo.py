"""The README's main command, end to end: `relay demo` trains, hands off, learns, and cleans up."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest

from tests.support.relay import process_alive

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow


def test_relay_demo_learns_survives_a_kill_and_keeps_serving_until_ctrl_c(tmp_path):
    """The README's command at its default sizes, with --keep (one demo run checks both: the
    training and hand-off are the same with and without it)."""
    root = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "relaytrain.cli", "demo", "--root", str(root), "--keep", "--eval-samples", "200"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "120"},
    )
    lines: list[str] = []
    url = None
    try:
        for line in demo.stdout:  # read until the demo says it keeps serving (it blocks there)
            lines.append(line)
            if "Ctrl-C stops it" in line:
                break
        out = "".join(lines)
        assert demo.poll() is None, out[-5000:]
        assert "kill -9" in out and "hand-offs: 1" in out
        assert re.search(r"^dashboard: http://127\.0\.0\.1:\d+/#token=relay_v_", out, re.M), "printed at start"
        assert "the models learned" in out, out[-5000:]
        assert (root / "artifacts" / "demo-sft" / "checkpoints").is_dir()
        assert (root / "artifacts" / "demo-grpo" / "checkpoints").is_dir()
        pids = [int(p.read_text()) for p in root.glob("workers/*/runs/*/logs/attempt_*/trainer.pid")]
        assert pids and not any(process_alive(pid) for pid in pids), "the demo left a trainer running"

        dashboard = re.search(r"dashboard at (http://127\.0\.0\.1:\d+/)#token=(relay_v_\S+)", out)
        assert dashboard, out[-5000:]
        url, token = dashboard.groups()
        assert "<title>relaytrain</title>" in httpx.get(url, timeout=5).text
        runs = httpx.get(f"{url}api/v1/runs", headers={"Authorization": f"Bearer {token}"}, timeout=5).json()
        assert {r["run_id"] for r in runs["items"]} == {"demo-sft", "demo-grpo"}
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        rest = demo.communicate(timeout=60)[0]
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, rest[-3000:]
    assert "stopping the commander" in rest
    with pytest.raises(httpx.TransportError):
        httpx.get(url, timeout=2)
