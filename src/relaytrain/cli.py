"""The ``relay`` command. Thin: parse, validate, then import the heavy part a command needs.

``relay --help`` imports neither torch nor the commander's web stack.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from relaytrain import __version__
from relaytrain.artifacts.sync_cli import push_latest_command, sync_app
from relaytrain.errors import ConfigError, RelayError
from relaytrain.providers.cli import hosts_app, launch_stack_command, print_lium_command, stack_app

if TYPE_CHECKING:
    from relaytrain.api.client import RelayClient

app = typer.Typer(
    name="relay",
    help="relaytrain: LLM post-training on unreliable GPUs. Runs are leased to workers and survive their machines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
token_app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)
db_app = typer.Typer(help="Manage the commander's database.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(db_app, name="db")

console = Console()
err_console = Console(stderr=True)

DEFAULT_COMMANDER = "http://127.0.0.1:8080"
DEFAULT_DB = "./relay.db"
CommanderOpt = Annotated[
    str, typer.Option("--commander", envvar="RELAY_COMMANDER", help="Commander URL.", show_default=True)
]
TokenOpt = Annotated[
    str | None, typer.Option("--token", envvar="RELAY_TOKEN", help="Bearer token (admin, or worker for workers).")
]
DbOpt = Annotated[
    str, typer.Option("--db", envvar="RELAY_DB", help="SQLite path or postgresql+psycopg://… URL.", show_default=True)
]


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def _client(commander: str, token: str | None) -> RelayClient:
    from relaytrain.api.client import RelayClient

    return RelayClient(commander, token, retries=2)


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    delta = time.time() - ts
    return f"in {-delta:.0f}s" if delta < 0 else f"{delta:.0f}s ago"


def main() -> None:
    """Entry point of the console script: named errors become one red line and exit 1."""
    try:
        app()
    except RelayError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        console.print(f"relaytrain {__version__}")
        raise typer.Exit()


# -- commander ---------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    db: DbOpt = DEFAULT_DB,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to bind.")] = 8080,
    token: Annotated[
        str | None, typer.Option("--token", envvar="RELAY_TOKEN", help="Admin token; required off loopback.")
    ] = None,
    sweep_interval: Annotated[float, typer.Option(min=0.05, help="Seconds between lease-expiry sweeps.")] = 5.0,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
    poll_hosts: Annotated[bool, typer.Option("--poll-hosts", help="Poll SSH hosts' GPUs and start workers on them.")]
    = False,
    public_url: Annotated[str | None, typer.Option(help="URL workers started over SSH reach this commander at.")]
    = None,
    poll_interval: Annotated[float, typer.Option(min=0.2, help="Seconds between GPU polls.")] = 30.0,
    autoscale: Annotated[bool, typer.Option("--autoscale/--no-autoscale",
                                            help="With --poll-hosts: start workers for queued runs.")] = True,
) -> None:
    """Run the commander: migrate the database, then serve the API under /api/v1."""
    if not token and not _is_loopback(host):
        raise fail(f"--host {host} is not a loopback address: give --token (or RELAY_TOKEN) to serve off this machine")
    import logging

    import uvicorn

    from relaytrain.commander.app import create_app
    from relaytrain.commander.store import Store

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = Store(db)
    store.upgrade()
    if not token:
        err_console.print("[yellow]warning:[/yellow] no --token: the API is open to anyone on this machine")
    err_console.print(f"commander on http://{host}:{port} over {store.describe()}")
    hosts = None
    if poll_hosts:
        from relaytrain.commander.hosts import serve_settings

        url = public_url or f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        hosts = serve_settings(store, public_url=url, admin_token=token or None, poll_interval_s=poll_interval,
                               autoscale=autoscale)
    api = create_app(store, admin_token=token or None, sweep_interval_s=sweep_interval, hosts=hosts)
    uvicorn.run(api, host=host, port=port, log_level=log_level.lower(), access_log=False)


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = DEFAULT_DB) -> None:
    """Apply the database migrations (relay serve also does this at start)."""
    from relaytrain.commander.store import Store

    store = Store(db)
    store.upgrade()
    console.print(f"{store.describe()} is at revision {store.revision()}")
    store.close()


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="A name to recognise the token by.")] = "worker",
    scope: Annotated[str, typer.Option(help="worker (worker endpoints only) or admin.")] = "worker",
    commander: CommanderOpt = DEFAULT_COMMANDER,
    token: TokenOpt = None,
) -> None:
    """Create a token (needs the admin token); it is printed once and stored hashed."""
    if scope not in ("worker", "admin"):
        raise fail(f"--scope: must be 'worker' or 'admin', not {scope!r}")
    with _client(commander, token) as client:
        created = client.create_token(name, scope)
    console.print(created.token, soft_wrap=True)


# -- runs --------------------------------------------------------------------------------------


@app.command()
def submit(
    run_file: Annotated[Path, typer.Argument(help="The run's YAML file.")],
    commander: CommanderOpt = DEFAULT_COMMANDER,
    token: TokenOpt = None,
) -> None:
    """Validate a run file and queue the run."""
    from relaytrain.config import load_run_config, run_config_dict

    try:
        config = load_run_config(run_file)
    except ConfigError as exc:
        raise fail(str(exc)) from exc
    with _client(commander, token) as client:
        run = client.submit(run_config_dict(config))
    console.print(f"submitted [bold]{run.run_id}[/bold] ({run.kind}, {run.max_steps} steps): {run.status}")


@app.command()
def runs(
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    commander: CommanderOpt = DEFAULT_COMMANDER,
    token: TokenOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List runs, newest first."""
    with _client(commander, token) as client:
        page = client.runs(status=status, limit=limit)
    if as_json:
        console.print_json(page.model_dump_json())
        return
    table = Table("run", "kind", "status", "step", "epoch", "holder", "retries", "updated")
    for r in page.items:
        table.add_row(r.run_id, r.kind, r.status, f"{r.step}/{r.max_steps}", str(r.epoch), r.holder or "-",
                      f"{r.retries_used}/{r.max_retries}", _ago(r.updated_at))
    console.print(table)
    if page.total > len(page.items):
        console.print(f"{len(page.items)} of {page.total} runs shown")


@app.command()
def status(
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    commander: CommanderOpt = DEFAULT_COMMANDER,
    token: TokenOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a run: status, step, lease, attempts and the latest durable checkpoint."""
    with _client(commander, token) as client:
        run = client.run(run_id)
        ledger = client.ledger(run_id)
    if as_json:
        console.print_json(json.dumps({**run.model_dump(mode="json"), "ledger": ledger.model_dump(mode="json")}))
        return
    _print_run(run.model_dump())
    _print_ledger(ledger.model_dump())


def _print_ledger(ledger: dict[str, Any]) -> None:
    if not ledger["attempts"]:
        return
    table = Table("", "wall", "ETTR", "GPU-h", "$", "steps lost", "failover", title="ledger")
    rows = [("run", ledger["total"])] + ([(f"provider {k}", v) for k, v in ledger["providers"].items()]
                                         if len(ledger["providers"]) > 1 else [])
    for label, s in rows:
        failover = f"{s['failover_mean_s']:.1f}s mean of {len(s['failover_s'])}" if s["failover_s"] else "-"
        table.add_row(label, f"{s['wall_s']:.0f}s", "-" if s["ettr"] is None else f"{s['ettr']:.2f}",
                      f"{s['gpu_hours']:.3f}", f"{s['dollars']:.2f}", str(s["steps_lost"]), failover)
    console.print(table)


def _print_run(run: dict[str, Any]) -> None:
    console.print(f"[bold]{run['run_id']}[/bold]  {run['kind']}  [bold]{run['status']}[/bold]"
                  f"  step {run['step']}/{run['max_steps']}  epoch {run['epoch']}")
    if run["holder"]:
        console.print(f"held by {run['holder']}, lease expires {_ago(run['lease_expires_at'])}")
    if run["cancel_requested"] and run["status"] == "running":
        console.print("cancel requested")
    console.print(f"retries {run['retries_used']}/{run['max_retries']}"
                  + (f", next try {_ago(run['not_before'])}" if run["status"] == "queued" else ""))
    ckpt = run["latest_checkpoint"]
    console.print(f"latest durable checkpoint: step {ckpt['step']} at {ckpt['uri']}" if ckpt
                  else "latest durable checkpoint: none")
    if run["attempts"]:
        table = Table("epoch", "worker", "start", "end", "outcome", "steps", "lost", title="attempts")
        for a in run["attempts"]:
            outcome = a["outcome"] or "running"
            if a["failure_class"]:
                outcome += f" ({a['failure_class']})"
            end = a["step_end"] if a["step_end"] is not None else "…"
            table.add_row(str(a["epoch"]), a["worker_id"], _when(a["granted_at"]), _when(a["ended_at"]), outcome,
                          f"{a['step_start']}→{end}", "-" if a["steps_lost"] is None else str(a["steps_lost"]))
        console.print(table)
    for ev in run.get("evaluations") or []:
        names = sorted({k for scores in ev["scores"].values() for k in scores if k != "eval_ok"})
        table = Table("step", *names, title=f"evaluation {ev['run_id']} on {ev['dataset']} ({ev['status']})")
        for step in sorted(ev["scores"], key=int):
            scores = ev["scores"][step]
            failed = scores.get("eval_ok") == 0
            table.add_row(str(step), *["failed" if failed else f"{scores[n]:.4g}" if n in scores else "-"
                                       for n in names])
        console.print(table)
    if run["last_error"]:
        console.print(f"[red]last error:[/red] {run['last_error']}")
    failed = [a for a in run["attempts"] if a["stderr_tail"]]
    if failed:
        console.print(f"[dim]stderr tail of epoch {failed[-1]['epoch']}:[/dim]")
        console.print(failed[-1]["stderr_tail"], markup=False, highlight=False)


@app.command()
def cancel(
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    commander: CommanderOpt = DEFAULT_COMMANDER,
    token: TokenOpt = None,
) -> None:
    """Cancel a run: at once if queued; a running one stops within one renew interval."""
    with _client(commander, token) as client:
        run = client.cancel(run_id)
    if run.status == "cancelled":
        console.print(f"{run_id} cancelled")
    else:
        console.print(f"{run_id}: cancel requested; {run.holder} stops it at its next renewal")


def _parse_steps(steps: str) -> str | list[int]:
    if steps in ("all", "latest"):
        return steps
    try:
        parsed = sorted({int(s) for s in steps.split(",") if s.strip()})
    except ValueError:
        parsed = []
    if not parsed or parsed[0] < 0:
        raise fail(f"--steps: expected all, latest or a list of steps like 100,200, got {steps!r}")
    return parsed


@app.command("eval")
def eval_(
    run: Annotated[str, typer.Option("--run", help="The run whose checkpoints to score.")],
    dataset: Annotated[str, typer.Option(help="A built-in dataset or a JSONL/Parquet file.")] = "arithmetic",
    steps: Annotated[str, typer.Option(help="all, latest, or steps like 100,200.")] = "all",
    metrics: Annotated[str, typer.Option(help="Comma-separated: exact_match, reward:NAME.")] = "exact_match",
    subset_frac: Annotated[float | None, typer.Option(min=0.0001, max=1, help="Score this fraction.")] = None,
    samples: Annotated[int | None, typer.Option(min=1, help="Score at most this many records.")] = None,
    template: Annotated[str, typer.Option(help="generic, r1, deepseek or chat.")] = "generic",
    timeout: Annotated[float, typer.Option(min=1, help="Seconds allowed per checkpoint.")] = 900,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the scores and print them.")] = False,
    commander: CommanderOpt = DEFAULT_COMMANDER,
    token: TokenOpt = None,
) -> None:
    """Score a run's durable checkpoints, each in its own process, on any free worker."""
    from relaytrain.config import parse_run_config, run_config_dict

    with _client(commander, token) as client:
        source = client.run(run)
        eval_id = f"{run[:100]}-eval-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            config = parse_run_config({
                "run_id": eval_id, "kind": "eval", "priority": source.priority, "store": source.config["store"],
                "hang_timeout_s": timeout + 60,
                "trainer": {"source_run": run, "dataset": dataset, "steps": _parse_steps(steps),
                            "metrics": [m.strip() for m in metrics.split(",") if m.strip()], "samples": samples,
                            "subset_frac": subset_frac, "template": template, "timeout_s": timeout},
            })
        except ConfigError as exc:
            raise fail(str(exc)) from exc
        client.submit(run_config_dict(config))
        console.print(f"queued evaluation [bold]{eval_id}[/bold] of {run} on {dataset}")
        if not wait:
            return
        while (status_ := client.run(eval_id).status) not in ("succeeded", "failed", "cancelled"):
            time.sleep(1)
        _print_run(client.run(run).model_dump())
        if status_ != "succeeded":
            raise fail(f"evaluation {eval_id} ended {status_}: relay status {eval_id}")


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(help="The ended run to continue.")],
    from_step: Annotated[str, typer.Option(help="latest, or an older durable step to fork from.")] = "latest",
    additional_steps: Annotated[int, typer.Option(min=0, help="Raise max_steps by this much.")] = 0,
    commander: CommanderOpt = DEFAULT_COMMANDER,
    token: TokenOpt = None,
) -> None:
    """Continue an ended run from its newest durable checkpoint; from an older step, fork it into
    <run_id>-from-<N> (the original's checkpoints are never touched). The checkpoint is verified first."""
    from relaytrain.artifacts import open_store
    from relaytrain.config import StoreConfig

    if from_step != "latest" and not from_step.isdigit():
        raise fail(f"--from-step: expected latest or a step number, got {from_step!r}")
    with _client(commander, token) as client:
        run = client.run(run_id)
        durable = {c.step: c for c in client.checkpoints(run_id).items}
        step = max(durable) if from_step == "latest" and durable else int(from_step) if from_step.isdigit() else None
        if step is None or step not in durable:
            raise fail(f"--from-step: {run_id} has no durable checkpoint at {from_step} "
                       f"(has: {', '.join(map(str, sorted(durable))) or 'none'})")
        ref = durable[step]
        check = open_store(StoreConfig(**run.config["store"])).verify_checkpoint(ref.store_run_id, step)
        if not check.ok:
            raise fail(f"the checkpoint at step {step} does not verify in the store: {check.reason}")
        resumed = client.resume(run_id, from_step=None if from_step == "latest" else step,
                                additional_steps=additional_steps)
    what = "re-opened" if resumed.run_id == run_id else f"forked into [bold]{resumed.run_id}[/bold]"
    console.print(f"{run_id} {what}: resumes at step {step}, runs to {resumed.max_steps}; {resumed.status}")


@app.command()
def checkpoints(
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    commander: CommanderOpt = DEFAULT_COMMANDER,
    token: TokenOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List a run's durable checkpoints."""
    with _client(commander, token) as client:
        items = client.checkpoints(run_id).items
    if as_json:
        console.print_json(json.dumps([c.model_dump() for c in items]))
        return
    table = Table("step", "epoch", "manifest sha256", "uri", "committed")
    for c in items:
        table.add_row(str(c.step), str(c.epoch), c.manifest_sha256[:16] + "…", c.uri, _when(c.created_at))
    console.print(table if items else f"{run_id} has no durable checkpoint yet")


# -- workers -----------------------------------------------------------------------------------


def _parse_labels(labels: list[str]) -> dict[str, str]:
    parsed = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise fail(f"--label: expected KEY=VALUE, got {item!r}")
        parsed[key] = value
    return parsed


@app.command()
def worker(
    commander: CommanderOpt = DEFAULT_COMMANDER,
    token: TokenOpt = None,
    worker_id: Annotated[str, typer.Option("--worker-id", envvar="WORKER_ID", help="Unique id; default: hostname.")]
    = "",
    workdir: Annotated[Path, typer.Option(envvar="RELAY_WORKDIR", help="Where runs live on this machine.")]
    = Path("./relay-work"),
    label: Annotated[list[str], typer.Option("--label", help="KEY=VALUE a run may require; repeatable.")] = [],  # noqa: B006
    kind: Annotated[list[str], typer.Option("--kind", help="Serve only these run kinds; repeatable.")] = [],  # noqa: B006
    max_runs: Annotated[int | None, typer.Option(min=1, help="Exit after this many attempts.")] = None,
    price_per_hour: Annotated[float | None, typer.Option(min=0, help="What this machine costs, $/hour.")] = None,
    provider: Annotated[str, typer.Option(help="local, ssh or lium (for the ledger).")] = "local",
    claim_wait: Annotated[float, typer.Option(min=0, max=60, help="Long-poll seconds per claim.")] = 10.0,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run a worker: claim runs, supervise their trainers, keep their leases, make checkpoints durable.

    SIGTERM or SIGINT checkpoints the current run, releases it as preempted, and exits.
    """
    import logging
    import socket

    from relaytrain.api.models import WORKER_ID_PATTERN
    from relaytrain.config import RUN_KINDS
    from relaytrain.worker import Worker, WorkerSettings

    worker_id = worker_id or socket.gethostname()
    if not re.fullmatch(WORKER_ID_PATTERN, worker_id):
        raise fail(f"--worker-id: {worker_id!r} must match {WORKER_ID_PATTERN}")
    bad = [k for k in kind if k not in RUN_KINDS]
    if bad:
        raise fail(f"--kind: unknown kind {bad[0]!r} (one of {', '.join(RUN_KINDS)})")
    logging.basicConfig(level=log_level.upper(), format=f"%(asctime)s %(levelname)s [{worker_id}] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = WorkerSettings(
        commander=commander, token=token, worker_id=worker_id, workdir=workdir.resolve(),
        labels=_parse_labels(label), kinds=kind or None, max_runs=max_runs, price_per_hour=price_per_hour,
        provider=provider, claim_wait_s=claim_wait,
    )
    raise typer.Exit(Worker(settings).run())


@app.command()
def logs(
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    workdir: Annotated[Path, typer.Option(envvar="RELAY_WORKDIR", help="The worker's workdir.")]
    = Path("./relay-work"),
    attempt: Annotated[int | None, typer.Option(help="Epoch of the attempt; default: the newest here.")] = None,
    stream: Annotated[str, typer.Option(help="stderr or stdout.")] = "stderr",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing as the log grows.")] = False,
    lines: Annotated[int, typer.Option(min=1, help="Lines to show from the end.")] = 50,
) -> None:
    """Show a trainer's log from a worker's workdir (runs/<run_id>/logs/attempt_<epoch>/)."""
    from relaytrain.config import validate_run_id

    if stream not in ("stderr", "stdout"):
        raise fail(f"--stream: must be stderr or stdout, not {stream!r}")
    try:
        validate_run_id(run_id)
    except ValueError as exc:
        raise fail(f"RUN_ID: {exc}") from exc
    logs_dir = workdir / "runs" / run_id / "logs"
    epochs = sorted(int(p.name.split("_")[1]) for p in logs_dir.glob("attempt_*") if p.name.split("_")[1].isdigit())
    if not epochs:
        raise fail(f"no logs of {run_id} under {logs_dir}")
    epoch = attempt if attempt is not None else epochs[-1]
    if epoch not in epochs:
        raise fail(f"--attempt: no attempt {epoch} here (have {', '.join(map(str, epochs))})")
    path = logs_dir / f"attempt_{epoch}" / f"{stream}.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    sys.stdout.write("".join(text.splitlines(keepends=True)[-lines:]))
    sys.stdout.flush()
    if follow:
        offset = len(text.encode())
        try:
            while True:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                offset += len(chunk)
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass


# -- training ----------------------------------------------------------------------------------


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def train(ctx: typer.Context) -> None:
    """Train without a commander: relay train sft|grpo --model tiny --dataset arithmetic --max-steps N
    --output-dir DIR [--resume-from auto|none|DIR] [--lora] [--use-unsloth] … (relay train sft --help: every flag)."""
    from relaytrain.train.standalone import main as train_main

    raise typer.Exit(train_main(ctx.args, prog="relay train"))


@app.command()
def demo(
    root: Annotated[Path, typer.Option(help="Folder for the demo's database, workers, checkpoints and logs.")]
    = Path("./relay-demo"),
    sft_steps: Annotated[int, typer.Option(min=10, help="SFT steps.")] = 500,
    grpo_steps: Annotated[int, typer.Option(min=10, help="GRPO steps.")] = 150,
    kill_at: Annotated[float, typer.Option(min=0.05, max=0.95, help="Kill the SFT holder at this fraction.")]
    = 0.4,
    eval_samples: Annotated[int, typer.Option(min=10, help="Held-out problems to score each model on.")] = 300,
) -> None:
    """Run the whole system here: a commander, two workers, SFT then GRPO of a tiny model on
    2-digit addition, a worker killed mid-run, and held-out accuracy at the end (a few minutes on a CPU)."""
    from relaytrain.demo import DemoSettings, run_demo

    settings = DemoSettings(root=root, sft_steps=sft_steps, grpo_steps=grpo_steps, kill_at=kill_at,
                            eval_samples=eval_samples)
    raise typer.Exit(run_demo(settings, console))


# -- deployment (relaytrain.providers) ----------------------------------------------------------

app.add_typer(sync_app, name="sync")
app.command("push-latest")(push_latest_command)
app.command("launch-stack")(launch_stack_command)
app.add_typer(stack_app, name="stack")
app.add_typer(hosts_app, name="hosts")
app.command("print-lium-command")(print_lium_command)

if __name__ == "__main__":  # pragma: no cover
    main()

