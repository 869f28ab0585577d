"""No token, store credential or secret env value is ever in clear where it does not belong
(docs/security.md): a stack (``relay launch-stack``, local provider) runs with a unique random
sentinel per secret — the admin token, the workers' token, S3 keys (a moto server; the workers
get them from an env file), a W&B-like key that two counter runs (one trainer an argv list, one a
shell string) reference with ``from_worker_env`` and check they got — then every sentinel is
looked for in every file under the stack's folder and the workers' workdirs (logs, run files,
state, the SQLite file itself), every row of every table of the commander's database, every
object of the store, every answer of every GET route of the API and of ``relay status --json``,
``relay runs --json``, ``relay logs``, ``relay checkpoints``, the stack summary JSON, and the
command lines of the commander and the workers (``ps`` shows them to every user). Any hit fails
the test with where it was.

The only places a secret may be: the env file the operator wrote, and each worker's ``worker.env``
(mode 0600) that carries it to the worker.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shlex
import stat
import sys
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import typer
import yaml
from typer.testing import CliRunner

from relaytrain.api.client import RelayClient
from relaytrain.cli import app as relay_app
from relaytrain.cli.stack import launch_stack_command, stack_app
from tests.support.commander import free_port, wait_until
from tests.support.relay import counter_run, process_alive

CHECK = Path(__file__).resolve().parents[1] / "support" / "env_check_trainer.py"
RUNS = ("sealed-argv", "sealed-shell")


def sentinel(what: str) -> str:
    return f"{what}-{secrets.token_hex(12)}"


class Leaks:
    """Where each sentinel was found, to fail with."""

    def __init__(self, sentinels: dict[str, str]) -> None:
        self.sentinels = sentinels
        self.found: list[str] = []
        self.looked = 0

    def check(self, where: str, data: str | bytes) -> None:
        self.looked += 1
        blob = data if isinstance(data, bytes) else data.encode("utf-8", "replace")
        for name, value in self.sentinels.items():
            if value.encode() in blob:
                self.found.append(f"{name} in {where}")


@pytest.fixture
def sealed_stack(tmp_path, moto, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RELAY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    values = {"admin token": sentinel("relay-admin"), "S3 access key": sentinel("AKIA"),
              "S3 secret key": sentinel("s3-secret"), "W&B key": sentinel("wandb")}
    bucket = f"sealed-{secrets.token_hex(4)}"
    moto.client().create_bucket(Bucket=bucket)
    secrets_file = tmp_path / "worker-secrets.env"
    secrets_file.write_text(
        f"AWS_ACCESS_KEY_ID={values['S3 access key']}\nAWS_SECRET_ACCESS_KEY={values['S3 secret key']}\n"
        f"TEAM_WANDB_KEY={values['W&B key']}\nAWS_DEFAULT_REGION=us-east-1\nAWS_ENDPOINT_URL_S3={moto.url}\n"
        f"AWS_CONFIG_FILE={tmp_path / 'no-aws-config'}\nAWS_SHARED_CREDENTIALS_FILE={tmp_path / 'no-aws-creds'}\n")
    secrets_file.chmod(0o600)
    expect = f"WANDB_API_KEY={hashlib.sha256(values['W&B key'].encode()).hexdigest()}"
    runs = []
    for run_id in RUNS:
        run = counter_run(run_id, Path("unused"), max_steps=6, every=3,
                          env={"WANDB_API_KEY": {"from_worker_env": "TEAM_WANDB_KEY"}})
        argv = [sys.executable, str(CHECK), expect]
        run["trainer"]["command"] = shlex.join(argv) if run_id.endswith("shell") else argv
        run["store"] = f"s3://{bucket}/relay"
        runs.append(run)
    stack = {"name": "sealed", "launch_dir": ".relay-launch",
             "commander": {"port": free_port(), "state_path": ".relay-launch/relay.db", "wait_s": 60},
             "provider": {"type": "local", "root": ".relay-launch/machines"},
             "workers": [{"name": "cpu", "count": 2, "env_file": secrets_file.name}],
             "runs": runs}
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(stack))
    yield path, values, bucket
    down = CliRunner().invoke(_stack_cli(), ["stack", "down", str(path), "--grace", "10"],
                              env={"RELAY_TOKEN": values["admin token"]})
    assert down.exit_code == 0 or "not" in down.output, down.output
    for pid_file in [*tmp_path.glob(".relay-launch/machines/*/worker.pid"), tmp_path / ".relay-launch/commander.pid"]:
        if pid_file.exists() and process_alive(pid := int(pid_file.read_text())):
            import os
            import signal

            os.kill(pid, signal.SIGKILL)


def _stack_cli() -> typer.Typer:
    app = typer.Typer()
    app.command("launch-stack")(launch_stack_command)
    app.add_typer(stack_app, name="stack")
    return app


def invoke(app: typer.Typer, args: list[str], env: dict[str, str]) -> str:
    result = CliRunner().invoke(app, args, env={"COLUMNS": "250", **env})
    assert result.exit_code == 0, f"relay {shlex.join(args)}: {result.output}\n{result.exception!r}"
    return result.output


def api_answers(url: str, token: str, workers: list[str]) -> dict[str, str]:
    """Every GET route of the commander's API, for each run and worker, as the admin sees it."""
    answers = {}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        document = http.get("/openapi.json").json()
        answers["GET /openapi.json"] = json.dumps(document)
        for path, ops in document["paths"].items():
            if "get" not in ops:
                continue
            for run_id in RUNS:
                for worker_id in workers:
                    concrete = path.format(run_id=run_id, worker_id=worker_id, name="sealed", step=3, epoch=1)
                    if concrete not in answers:
                        answer = http.get(concrete)
                        answers[f"GET {concrete} ({answer.status_code})"] = answer.text
        answers["GET /"] = http.get("/").text
    return answers


def test_no_secret_in_clear_anywhere_a_stack_writes_or_answers(sealed_stack, tmp_path, moto):
    stack_file, values, bucket = sealed_stack
    admin = values["admin token"]
    summary_text = invoke(_stack_cli(), ["launch-stack", str(stack_file)], {"RELAY_TOKEN": admin})
    summary = json.loads(summary_text)
    workers = summary["workers"]
    worker_envs = [Path(w["config_path"]) for w in workers]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in worker_envs)
    worker_token = next(line.split("=", 1)[1] for line in worker_envs[0].read_text().splitlines()
                        if line.startswith("RELAY_TOKEN="))
    values["worker token"] = worker_token.strip("'")
    assert values["worker token"].startswith("relay_w_")
    leaks = Leaks(values)
    leaks.check("the launch-stack summary", summary_text)

    url = summary["commander"]["url"]
    with RelayClient(url, admin) as client:
        for run_id in RUNS:  # the trainers exit 78 unless they got the W&B key: resolution works
            run = wait_until(lambda r=run_id: (x := client.run(r)).status in ("succeeded", "failed") and x, 120,
                             f"{run_id} to end")
            assert run.status == "succeeded" and run.step == 6, (run_id, run.last_error, run.attempts)
        for pid in [summary["commander"]["pid"], *(w["pid"] for w in workers)]:
            assert process_alive(pid)
            leaks.check(f"the command line of pid {pid}", Path(f"/proc/{pid}/cmdline").read_bytes())
    for where, text in api_answers(url, admin, [w["worker_id"] for w in workers]).items():
        leaks.check(where, text)
    cli_env = {"RELAY_TOKEN": admin, "RELAY_COMMANDER": url}
    for run_id in RUNS:
        for args in (["status", run_id, "--json"], ["status", run_id], ["logs", run_id],
                     ["checkpoints", run_id, "--json"], ["metrics", run_id, "--json"]):
            leaks.check(f"relay {shlex.join(args)}", invoke(relay_app, args, cli_env))
    leaks.check("relay runs --json", invoke(relay_app, ["runs", "--json"], cli_env))
    leaks.check("relay stack status", invoke(_stack_cli(), ["stack", "status", str(stack_file)], cli_env))
    leaks.check("the stack's state file", (tmp_path / ".relay-launch" / "stack.json").read_text())
    invoke(_stack_cli(), ["stack", "down", str(stack_file), "--grace", "30"], cli_env)

    allowed = {stack_file.parent / "worker-secrets.env", *worker_envs}
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p not in allowed]
    assert any(p.name == "commander.log" for p in files) and any(p.name == "worker.log" for p in files)
    assert any(p.name == "run_config.json" for p in files) and any(p.name == "stdout.log" for p in files)
    for path in files:
        leaks.check(str(path.relative_to(tmp_path)), path.read_bytes())
    engine = sa.create_engine(f"sqlite:///{tmp_path / '.relay-launch' / 'relay.db'}")
    try:
        metadata = sa.MetaData()
        metadata.reflect(engine)
        with engine.connect() as conn:
            rows = 0
            for table in metadata.sorted_tables:
                for row in conn.execute(sa.select(table)):
                    rows += 1
                    leaks.check(f"table {table.name} row {dict(row._mapping)!r:.200}", repr(tuple(row)))
    finally:
        engine.dispose()
    assert rows > 20 and "runs" in metadata.tables and "tokens" in metadata.tables
    s3 = moto.client()
    objects = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert len(objects) > 4, "the runs' checkpoints are in the store"
    for obj in objects:
        leaks.check(f"s3://{bucket}/{obj['Key']}", s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
    assert leaks.found == [], f"secrets in clear ({leaks.looked} places looked at):\n" + "\n".join(leaks.found)
