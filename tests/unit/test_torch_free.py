"""The control plane imports no torch: config, api, commander and the CLI load in a bare interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["relaytrain.config", "relaytrain.api.client", "relaytrain.commander.app",
                                    "relaytrain.commander.store", "relaytrain.cli"])
def test_module_imports_without_torch(module):
    code = (f"import sys, {module}; heavy = sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules);"
            "print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_help_is_fast_and_light():
    code = (
        "import sys; from typer.testing import CliRunner; from relaytrain.cli import app; "
        "r = CliRunner().invoke(app, ['--help']); "
        "print(r.exit_code, 'torch' in sys.modules, 'fastapi' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["0", "False", "False"], result.stderr
