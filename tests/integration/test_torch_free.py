"""The control plane imports no torch and no tracker (W&B, MLflow, TensorBoard): config, api,
commander, the CLI and the worker load in a bare interpreter."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import relaytrain


@pytest.mark.parametrize("module", ["relaytrain.config", "relaytrain.api.client", "relaytrain.commander.app",
                                    "relaytrain.commander.store", "relaytrain.cli", "relaytrain.worker.agent",
                                    "relaytrain.envs"])
def test_module_imports_without_torch(module):
    heavy = ("torch", "transformers", "peft", "wandb", "mlflow", "tensorboard")
    code = (f"import sys, {module}; heavy = sorted(m for m in {heavy!r} if m in sys.modules);"
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


# What `relay --help` may load of relaytrain: the CLI's own modules, errors, and nothing else — no
# artifact store (boto3, huggingface_hub), no provider, no commander, no config models, no torch.
HELP_MODULES = {
    "relaytrain", "relaytrain.errors", "relaytrain.cli", "relaytrain.cli.common", "relaytrain.cli.render",
    "relaytrain.cli.commander", "relaytrain.cli.runs", "relaytrain.cli.worker", "relaytrain.cli.train",
    "relaytrain.cli.sync", "relaytrain.cli.stack", "relaytrain.cli.hosts", "relaytrain.cli.rollout",
    "relaytrain.cli.metrics", "relaytrain.cli.tls", "relaytrain.cli.tokens",
}


def test_relay_help_loads_only_the_cli():
    code = (
        "import contextlib, io, json, sys\n"
        "sys.argv = ['relay', '--help']\n"
        "from relaytrain.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as exc:\n"
        "        code = exc.code\n"
        "mods = sorted(m for m in sys.modules if m.split('.')[0] == 'relaytrain')\n"
        "heavy = sorted(m for m in ('torch', 'fastapi', 'boto3', 'huggingface_hub', 'asyncssh', 'sqlalchemy',\n"
        "                           'pydantic', 'httpx') if m in sys.modules)\n"
        "print(json.dumps({'code': code, 'help': out.getvalue(), 'modules': mods, 'heavy': heavy}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["code"] == 0 and "launch-stack" in report["help"] and "push-latest" in report["help"]
    assert set(report["modules"]) == HELP_MODULES, f"relay --help loaded {len(report['modules'])}: {report['modules']}"
    assert report["heavy"] == []


def test_typer_and_rich_live_only_in_the_cli():
    src = Path(relaytrain.__file__).parent
    offenders = []
    for path in sorted(src.rglob("*.py")):
        if path.relative_to(src).parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{path.relative_to(src)}: {name}" for name in names
                          if name.split(".")[0] in ("typer", "rich")]
    assert offenders == []


def test_checkpoint_and_artifacts_import_without_torch() -> None:
    code = ("import sys; import relaytrain.checkpoint, relaytrain.artifacts; "
            "assert 'torch' not in sys.modules, 'torch was imported'; "
            "assert 'safetensors' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
