"""The commands about runs: ``relay submit``, ``runs``, ``status``, ``cancel``, ``eval``,
``resume``, ``checkpoints`` and ``logs``, all through the commander's API."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from relaytrain import EVAL_BATCH_SIZE

from .common import (
    DEFAULT_COMMANDER,
    CaCertOpt,
    CommanderOpt,
    JsonOpt,
    TokenOpt,
    client,
    console,
    err_console,
    fail,
    print_json,
    print_warning,
)
from .render import print_checkpoints, print_degraded, print_ledger, print_rollout_pool, print_run, print_runs

if TYPE_CHECKING:
    from relaytrain.api.client import RelayClient
    from relaytrain.api.models import RunDetail
    from relaytrain.api.rollout import RolloutEndpoint

RunIdArg = Annotated[str, typer.Argument(help="The run's id.")]


def submit(
    run_file: Annotated[Path, typer.Argument(help="The run's YAML file.")],
    commander: CommanderOpt = DEFAULT_COMMANDER,
    ca_cert: CaCertOpt = None,
    token: TokenOpt = None,
) -> None:
    """Validate a run file and queue the run."""
    from relaytrain.config import load_run_config, run_config_dict
    from relaytrain.errors import ConfigError

    try:
        config = load_run_config(run_file)
    except ConfigError as exc:
        fail(str(exc))
    with client(commander, token, ca_cert) as api:
        run = api.submit(run_config_dict(config))
    console.print(f"submitted [bold]{run.run_id}[/bold] ({run.kind}, {run.max_steps} steps): {run.status}")


def runs(
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    commander: CommanderOpt = DEFAULT_COMMANDER,
    ca_cert: CaCertOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List runs, newest first."""
    with client(commander, token, ca_cert) as api:
        page = api.runs(status=status, limit=limit)
    if as_json:
        print_json(page.model_dump(mode="json"))
        return
    print_runs(page)


def status(
    run_id: RunIdArg,
    commander: CommanderOpt = DEFAULT_COMMANDER,
    ca_cert: CaCertOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a run: status, step, lease, attempts, the latest durable checkpoint, its rollout pool, and
    which of the workers it ran on are degraded (and why)."""
    with client(commander, token, ca_cert) as api:
        run = api.run(run_id)
        ledger = api.ledger(run_id)
        pool = _rollout_pool(api, run)
        tried = {a.worker_id for a in run.attempts}
        workers = [w for w in api.workers() if w.worker_id in tried]
    if as_json:
        print_json({**run.model_dump(mode="json"), "ledger": ledger.model_dump(mode="json"),
                    "rollout": pool.model_dump(mode="json", exclude={"secret"}) if pool else None,
                    "workers": [w.model_dump(mode="json") for w in workers]})
        return
    print_run(run.model_dump())
    print_degraded([w.model_dump() for w in workers])
    if pool is not None:
        print_rollout_pool(pool.model_dump())
    print_ledger(ledger.model_dump())


def _rollout_pool(api: RelayClient, run: RunDetail) -> RolloutEndpoint | None:
    """The running run's rollout manager and the pool it reported, or None (it has none now)."""
    from relaytrain.api.status import RunStatus
    from relaytrain.errors import NotFound

    if run.status != RunStatus.RUNNING:
        return None
    try:
        return api.rollout_endpoint(run.run_id)
    except NotFound:
        return None


def cancel(
    run_id: RunIdArg,
    commander: CommanderOpt = DEFAULT_COMMANDER,
    ca_cert: CaCertOpt = None,
    token: TokenOpt = None,
) -> None:
    """Cancel a run: at once if queued; a running one stops within one renew interval."""
    from relaytrain.api.status import RunStatus

    with client(commander, token, ca_cert) as api:
        run = api.cancel(run_id)
    if run.status == RunStatus.CANCELLED:
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
        fail(f"--steps: expected all, latest or a list of steps like 100,200, got {steps!r}")
    return parsed


def eval_(
    run: Annotated[str, typer.Option("--run", help="The run whose checkpoints to score.")],
    dataset: Annotated[str, typer.Option(help="A built-in dataset or a JSONL/Parquet file.")] = "arithmetic",
    steps: Annotated[str, typer.Option(help="all, latest, or steps like 100,200.")] = "all",
    metrics: Annotated[str, typer.Option(help="Comma-separated: exact_match, reward:NAME.")] = "exact_match",
    subset_frac: Annotated[float | None, typer.Option(min=0.0001, max=1, help="Score this fraction.")] = None,
    samples: Annotated[int | None, typer.Option(min=1, help="Score at most this many records.")] = None,
    template: Annotated[str, typer.Option(help="generic, r1, deepseek or chat.")] = "generic",
    timeout: Annotated[float, typer.Option(min=1, help="Seconds allowed per checkpoint.")] = 900,
    batch_size: Annotated[int, typer.Option(min=1, max=4096, help="Prompts completed together.")] = EVAL_BATCH_SIZE,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the scores and print them.")] = False,
    commander: CommanderOpt = DEFAULT_COMMANDER,
    ca_cert: CaCertOpt = None,
    token: TokenOpt = None,
) -> None:
    """Score a run's durable checkpoints, each in its own process, on any free worker (one with a GPU,
    scoring in bf16, when the run asked for GPUs)."""
    from relaytrain.api.evals import build_eval_run, time_tag
    from relaytrain.api.status import TERMINAL, RunStatus
    from relaytrain.config import run_config_dict
    from relaytrain.errors import ConfigError

    settings = {"dataset": dataset, "metrics": [m.strip() for m in metrics.split(",") if m.strip()],
                "samples": samples, "subset_frac": subset_frac, "template": template, "timeout_s": timeout,
                "batch_size": batch_size}
    with client(commander, token, ca_cert) as api:
        source = api.run(run)
        try:
            config = build_eval_run(source.model_dump(), settings, steps=_parse_steps(steps), tag=time_tag())
        except ConfigError as exc:
            fail(str(exc))
        eval_id = config.run_id
        api.submit(run_config_dict(config))
        console.print(f"queued evaluation [bold]{eval_id}[/bold] of {run} on {dataset}")
        if not wait:
            return
        while (status_ := api.run(eval_id).status) not in TERMINAL:
            time.sleep(1)
        print_run(api.run(run).model_dump())
        if status_ != RunStatus.SUCCEEDED:
            fail(f"evaluation {eval_id} ended {status_}: relay status {eval_id}")


def resume(
    run_id: Annotated[str, typer.Argument(help="The ended run to continue.")],
    from_step: Annotated[str, typer.Option(help="latest, or an older durable step to fork from.")] = "latest",
    additional_steps: Annotated[int, typer.Option(min=0, help="Raise max_steps by this much.")] = 0,
    commander: CommanderOpt = DEFAULT_COMMANDER,
    ca_cert: CaCertOpt = None,
    token: TokenOpt = None,
) -> None:
    """Continue an ended run from its newest durable checkpoint; from an older step, fork it into
    <run_id>-from-<N> (the original's checkpoints are never touched). The checkpoint is verified first."""
    from relaytrain.artifacts import verify_durable
    from relaytrain.config import StoreConfig

    if from_step != "latest" and not from_step.isdigit():
        fail(f"--from-step: expected latest or a step number, got {from_step!r}")
    with client(commander, token, ca_cert) as api:
        run = api.run(run_id)
        durable = {c.step: c for c in api.checkpoints(run_id).items}
        step = max(durable) if from_step == "latest" and durable else int(from_step) if from_step.isdigit() else None
        if step is None or step not in durable:
            fail(f"--from-step: {run_id} has no durable checkpoint at {from_step} "
                 f"(has: {', '.join(map(str, sorted(durable))) or 'none'})")
        ref = durable[step]
        check, where = verify_durable(StoreConfig(**run.config["store"]), ref.store_run_id, step, ref.uri)
        if not check.ok:
            fail(f"the checkpoint at step {step} does not verify in the store ({where}): {check.reason}")
        resumed = api.resume(run_id, from_step=None if from_step == "latest" else step,
                             additional_steps=additional_steps)
    what = "re-opened" if resumed.run_id == run_id else f"forked into [bold]{resumed.run_id}[/bold]"
    console.print(f"{run_id} {what}: resumes at step {step}, runs to {resumed.max_steps}; {resumed.status}")


def checkpoints(
    run_id: RunIdArg,
    commander: CommanderOpt = DEFAULT_COMMANDER,
    ca_cert: CaCertOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a run's durable checkpoints."""
    with client(commander, token, ca_cert) as api:
        items = api.checkpoints(run_id).items
    if as_json:
        print_json([c.model_dump() for c in items])
        return
    print_checkpoints(run_id, items)


def logs(
    run_id: RunIdArg,
    commander: CommanderOpt = DEFAULT_COMMANDER,
    ca_cert: CaCertOpt = None,
    token: TokenOpt = None,
    attempt: Annotated[int | None, typer.Option(min=1, help="The attempt's epoch; default: the latest (with -f, "
                                                "each attempt in turn as the run is handed on).")] = None,
    stream: Annotated[str | None, typer.Option(help="Only stdout or only stderr; default: both, in the order "
                                               "the worker read them.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new output until the run ends.")]
    = False,
) -> None:
    """Show a run's trainer output (stdout and stderr), kept by the commander, from any machine.

    Each attempt keeps the run file's logs.max_bytes (default 4 MiB), the oldest output dropped
    first; what was dropped is said on stderr.
    """
    from relaytrain.api.status import TERMINAL, LogStream
    from relaytrain.config import validate_run_id

    try:
        validate_run_id(run_id)
    except ValueError as exc:
        fail(f"RUN_ID: {exc}")
    if stream is not None and stream not in tuple(LogStream):
        fail(f"--stream: must be stdout or stderr, not {stream!r}")
    with client(commander, token, ca_cert) as api:
        epoch, after, settled = attempt, 0, False
        while True:
            page = api.logs(run_id, attempt=epoch, after=after, limit=1000)
            if epoch is None and page.attempt is not None:
                epoch = page.attempt
            sys.stdout.write("".join(i.text for i in page.items if stream is None or i.stream == stream))
            sys.stdout.flush()
            after = page.next
            if len(page.items) == 1000:
                continue  # more is waiting
            run = api.run(run_id) if follow else None
            newer = run is not None and attempt is None and any(a.epoch > (epoch or 0) for a in run.attempts)
            # An ended attempt of a run that goes on is not the end when following the latest: its
            # heir is on the way (a requeued run waits for a worker), so wait for it.
            ended = run is None or run.status in TERMINAL or newer or (attempt is not None and any(
                a.epoch == epoch and a.ended_at is not None for a in run.attempts))
            if not ended:
                time.sleep(1.0)
                continue
            if run is not None and not settled:
                settled = True  # read once more: what was shipped before the attempt ended
                continue
            settled = False
            if page.dropped:
                print_warning(f"attempt {epoch}: {page.dropped} bytes of output were dropped (the oldest first: "
                              "over the run's logs.max_bytes, or while the commander could not take them)")
            if not newer:
                if epoch is None:
                    print_warning(f"{run_id} has had no attempt yet")
                return
            following = min((a for a in run.attempts if a.epoch > (epoch or 0)), key=lambda a: a.epoch)
            err_console.print(f"── attempt {following.epoch} on {following.worker_id} ──", highlight=False,
                              markup=False)
            epoch, after = following.epoch, 0
