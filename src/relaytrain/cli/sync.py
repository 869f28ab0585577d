"""``relay sync …`` and ``relay push-latest``: commands over :mod:`relaytrain.artifacts.sync`.

    relay sync backup RUN_ID --to s3://bucket/relay          # every valid local checkpoint
    relay sync backup-all --to s3://bucket/relay --cleanup --keep-latest
    relay sync list-backups s3://bucket/relay
    relay sync restore RUN_ID --from s3://bucket/relay [--step N] [--to DIR]
    relay sync prune RUN_ID --store s3://bucket/relay --keep-last 3 [--keep-every 1000]
                     [--keep-best exact_match --evals DIR]
    relay push-latest --run-root DIR --repo-id USER/REPO [--branch main]

The stores are imported by the command that needs them. Bad arguments exit 2 naming the
argument, before anything changes; a failed operation prints one red line and exits 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .common import DEFAULT_WORKDIR, JsonOpt, SyncWorkdirOpt, bad_parameter, console, print_json, relay_errors
from .render import print_backup_listing, print_backups, steps_list, transfers

sync_app = typer.Typer(help="Back up, list, restore and prune checkpoints in a store (S3, HF Hub, folder).",
                       no_args_is_help=True)

StoreUriOpt = Annotated[str, typer.Option("--to", help="Store URI: s3://bucket/prefix, hf://user/repo or a path.")]
EndpointOpt = Annotated[str | None, typer.Option("--endpoint-url",
                                                 help="S3-compatible endpoint (default: AWS configuration).")]
RegionOpt = Annotated[str | None, typer.Option("--region", help="S3 region (default: AWS configuration).")]


class _StoreRef:
    """What ``open_store`` reads from a config: the URI and the S3 options."""

    def __init__(self, uri: str, endpoint_url: str | None, region: str | None) -> None:
        self.uri, self.endpoint_url, self.region, self.dry_run = uri, endpoint_url, region, False


def _run_id(run_id: str) -> str:
    from relaytrain.artifacts.base import check_run_id

    try:
        return check_run_id(run_id)
    except ValueError as exc:
        bad_parameter(str(exc), "'RUN_ID'")


def _open(uri: str, endpoint_url: str | None, region: str | None, hint: str) -> Any:
    from relaytrain.artifacts import open_store
    from relaytrain.errors import ArtifactError

    try:
        return open_store(_StoreRef(uri, endpoint_url, region))
    except (ArtifactError, ValueError) as exc:
        bad_parameter(str(exc), hint)


def _report_backups(reports: list[Any]) -> None:
    print_backups(reports)
    if any(not r.ok for r in reports):
        raise typer.Exit(1)


@sync_app.command()
def backup(
    run_id: Annotated[str, typer.Argument(help="The run whose checkpoints to back up.")],
    to: StoreUriOpt,
    workdir: SyncWorkdirOpt = DEFAULT_WORKDIR,
    endpoint_url: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Upload every valid local checkpoint of RUN_ID (verified); skip those already stored."""
    from relaytrain.artifacts.sync import backup_run, checkpoints_dir

    if not checkpoints_dir(workdir, _run_id(run_id)).is_dir():
        bad_parameter(f"no run {run_id!r} in {workdir / 'runs'}", "'RUN_ID'")
    store = _open(to, endpoint_url, region, "'--to'")
    with relay_errors(), transfers() as progress:
        report = backup_run(store, workdir, run_id, progress)
    _report_backups([report])


@sync_app.command("backup-all")
def backup_all(
    to: StoreUriOpt,
    cleanup: Annotated[bool, typer.Option("--cleanup", help="Then delete local checkpoints that are durable.")] = False,
    keep_latest: Annotated[bool, typer.Option("--keep-latest/--no-keep-latest",
                                              help="With --cleanup, keep each run's newest local checkpoint.")] = True,
    workdir: SyncWorkdirOpt = DEFAULT_WORKDIR,
    endpoint_url: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Back up every run in the workdir; with --cleanup, delete the local copies the store
    holds and verifies (never one the store lacks)."""
    from relaytrain.artifacts.sync import backup_all as run_all
    from relaytrain.artifacts.sync import local_runs

    if not local_runs(workdir):
        bad_parameter(f"no runs with checkpoints in {workdir / 'runs'}", "'--workdir'")
    store = _open(to, endpoint_url, region, "'--to'")
    with relay_errors(), transfers() as progress:
        reports = run_all(store, workdir, cleanup=cleanup, keep_latest=keep_latest, progress=progress)
    _report_backups(reports)


@sync_app.command("list-backups")
def list_backups(
    uri: Annotated[str, typer.Argument(help="Store URI: s3://bucket/prefix, hf://user/repo or a path.")],
    run: Annotated[str | None, typer.Option("--run", help="Only this run.")] = None,
    as_json: JsonOpt = False,
    endpoint_url: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """List the runs and checkpoints in a store, with sizes."""
    from relaytrain.artifacts.sync import list_backups as listing

    store = _open(uri, endpoint_url, region, "'URI'")
    runs = [_run_id(run)] if run is not None else None
    with relay_errors():
        found = listing(store, runs)
    if as_json:
        print_json({run_id: [vars(c) for c in items] for run_id, items in found.items()})
        return
    print_backup_listing(found)


@sync_app.command()
def restore(
    run_id: Annotated[str, typer.Argument(help="The run to restore.")],
    from_: Annotated[str, typer.Option("--from", help="Store URI to restore from.")],
    to: Annotated[Path | None, typer.Option("--to", help="Workdir to restore into (default: --workdir).")] = None,
    step: Annotated[int | None, typer.Option("--step", min=0, help="Only this step (default: all).")] = None,
    workdir: SyncWorkdirOpt = DEFAULT_WORKDIR,
    endpoint_url: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Download the checkpoints of RUN_ID into <DIR>/runs/RUN_ID/checkpoints/, verified, and
    set `latest`. A corrupt object aborts, naming the file."""
    from relaytrain.artifacts.sync import restore_run

    store = _open(from_, endpoint_url, region, "'--from'")
    dest = to if to is not None else workdir
    with relay_errors():
        steps = store.list_checkpoints(_run_id(run_id))
    if not steps:
        bad_parameter(f"{from_} holds no checkpoint of run {run_id!r}", "'RUN_ID'")
    if step is not None and step not in steps:
        bad_parameter(f"{from_} holds no step {step} of run {run_id!r} (it holds: {steps_list(steps)})", "'--step'")
    with relay_errors(), transfers() as progress:
        report = restore_run(store, run_id, dest, step=step, progress=progress)
    console.print(f"restored {steps_list(report.restored)}; already present {steps_list(report.already)}; "
                  f"latest -> step {report.latest} in {report.folder}", highlight=False)


@sync_app.command()
def prune(
    run_id: Annotated[str, typer.Argument(help="The run whose stored checkpoints to prune.")],
    store_uri: Annotated[str, typer.Option("--store", help="Store URI.")],
    keep_last: Annotated[int, typer.Option("--keep-last", min=1, help="Keep the newest K checkpoints.")],
    keep_every: Annotated[int | None, typer.Option("--keep-every", min=1, help="Also keep steps divisible by M.")]
    = None,
    keep_best: Annotated[str | None, typer.Option(
        "--keep-best", help="Also keep the best step by this metric: [DATASET/]NAME[:max|min].")] = None,
    evals: Annotated[Path | None, typer.Option(
        "--evals", help="Folder of eval results (<dataset>/consolidated_metrics.csv), for --keep-best.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be deleted; delete nothing.")] = False,
    endpoint_url: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Delete old checkpoints from the store; never the newest one."""
    from relaytrain.artifacts.sync import best_steps, prune_store

    _run_id(run_id)
    if keep_best is not None:
        if evals is None:
            bad_parameter("--keep-best needs --evals DIR (a folder of <dataset>/consolidated_metrics.csv)", "'--evals'")
        try:
            best_steps(evals, keep_best)
        except ValueError as exc:
            bad_parameter(str(exc), "'--keep-best'")
    elif evals is not None:
        bad_parameter("--evals is only used with --keep-best", "'--evals'")
    store = _open(store_uri, endpoint_url, region, "'--store'")
    with relay_errors():
        try:
            report = prune_store(store, run_id, keep_last=keep_last, keep_every=keep_every, keep_best=keep_best,
                                 evals_dir=evals, dry_run=dry_run)
        except ValueError as exc:
            bad_parameter(str(exc), "'--keep-best'")
    verb = "would delete" if dry_run else "deleted"
    best = "".join(f"; best: step {s} ({abs(v):g})" for s, v in report.best.items())
    console.print(f"{run_id}: kept {steps_list(report.kept)}; {verb} {steps_list(report.deleted)}{best}",
                  highlight=False)


def push_latest_command(
    run_root: Annotated[Path, typer.Option("--run-root", help="The run's folder (holds checkpoints/).")],
    repo_id: Annotated[str, typer.Option("--repo-id", help="Hub repository USER/REPO (created private).")],
    branch: Annotated[str, typer.Option("--branch", help="Branch to commit to.")] = "main",
    parent_commit: Annotated[str | None, typer.Option(
        "--parent-commit", help="The run's recorded commit: refuse if it is not on the branch, or if a newer "
                                "lease epoch committed a checkpoint after it.")] = None,
    trajectories: Annotated[Path | None, typer.Option(
        "--trajectories", help="A folder of rollout trajectories to include.")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Write hf_upload_plan.json next to the checkpoint; no network.")] = False,
) -> None:
    """Push the newest valid checkpoint of a run to the Hugging Face Hub as one commit."""
    from relaytrain.artifacts.hf import parse_hf_uri
    from relaytrain.artifacts.sync import push_latest
    from relaytrain.contract import RunLayout
    from relaytrain.errors import ArtifactError

    if not RunLayout(run_root).checkpoints.is_dir():
        bad_parameter(f"{run_root} has no checkpoints/ folder", "'--run-root'")
    try:
        parse_hf_uri(f"hf://{repo_id}@{branch}")
    except ArtifactError as exc:
        bad_parameter(str(exc), "'--repo-id'")
    if trajectories is not None and not trajectories.is_dir():
        bad_parameter(f"{trajectories} is not a folder", "'--trajectories'")
    with relay_errors(), transfers() as progress:
        try:
            result = push_latest(run_root, repo_id, branch, parent_commit=parent_commit, trajectories_dir=trajectories,
                                 dry_run=dry_run, progress=progress(f"push {repo_id}"))
        except ValueError as exc:
            bad_parameter(str(exc), "'--run-root'")
    what = "planned (dry run)" if dry_run else f"commit {result.commit or '(unchanged)'}"
    console.print(f"step {result.step} -> {result.uri}: {what}", highlight=False)
