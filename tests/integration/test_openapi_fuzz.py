"""A bounded schemathesis run against the served OpenAPI document finds no 500."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(commander, tmp_path):
    exe = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    cmd = [
        exe, "run", f"{commander.url}/openapi.json",
        "--checks", "not_a_server_error",
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", "15", "--seed", "7", "--request-timeout", "20",
        "-H", f"Authorization: Bearer {commander.token}",
        # The claim long-polls for up to wait_s (≤ 60 s) per request; its bad input is covered in test_api.
        "--exclude-path", "/api/v1/leases/claim",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
