"""``relay sync …`` and ``relay push-latest``: typer commands over ``relaytrain.artifacts.sync``.

    relay sync backup RUN_ID --to s3://bucket/relay          # every valid local checkpoint
    relay sync backup-all --to s3://bucket/relay --cleanup --keep-latest
    relay sync list-backups s3://bucket/relay
    relay sync restore RUN_ID --from s3://bucket/relay [--step N] [--to DIR]
    relay sync prune RUN_ID --store s3://bucket/relay --keep-last 3 [--keep-every 1000]
                     [--keep-best exact_match --evals DIR]
    relay push-latest --run-root DIR --repo-id USER/REPO [--branch main]

The lead mounts ``sync_app`` as ``relay sync`` and registers ``push_latest_command`` as
``relay push-latest``. Only typer and rich are imported here; the stores are imported by the
command that needs them. Bad arguments exit 2 naming the argument, before anything changes;
a failed operation prints one red line and exits 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

sync_app = typer.Typer(help="Back up, list, restore and prune checkpoints in a store (S3, HF Hub, folder).",
                       no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)

WorkdirOpt = Annotated[Path, typer.Option("--workdir", envvar="RELAY_WORKDIR",
                                          help="The worker's workdir (runs/<run_id>/checkpoints/…).")]
EndpointOpt = Annotated[str | None, typer.Option("--endpoint-url",
                                                 help="S3-compatible endpoint (default: AWS configuration).")]
RegionOpt = Annotated[str | None, typer.Option("--region", help="S3 region (default: AWS configuration).")]
DEFAULT_WORKDIR = Path("./relay-work")


class _StoreRef:
    """What ``open_store`` reads from a config: the URI and the S3 options."""

    def __init__(self, uri: str, endpoint_url: str | None, region: str | None) -> None:
        self.uri, self.endpoint_url, self.region, self.dry_run = uri, endpoint_url, region, False


def _bad(message: str, hint: str) -> NoReturn:
    raise typer.BadParameter(message, param_hint=hint)


def _fail(message: str) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(1)


def _run_id(run_id: str) -> str:
    from relaytrain.artifacts.base import check_run_id

    try:
        return check_run_id(run_id)
    except ValueError as exc:
        _bad(str(exc), "'RUN_ID'")


def _open(uri: str, endpoint_url: str | None, region: str | None, hint: str) -> Any:
    from relaytrain.artifacts import open_store
    from relaytrain.errors import ArtifactError

    try:
        return open_store(_StoreRef(uri, endpoint_url, region))
    except (ArtifactError, ValueError) as exc:
        _bad(str(exc), hint)


@contextmanager
def _transfers() -> Iterator[Callable[[str], Callable[[int, int], None]]]:
    """A rich progress display; yields ``factory(label) -> progress(done, total)``."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=False) as bars:
        def factory(label: str) -> Callable[[int, int], None]:
            task = bars.add_task(label, total=None)
            return lambda done, total: bars.update(task, completed=done, total=total)

        yield factory


@contextmanager
def _errors() -> Iterator[None]:
    """Named relaytrain errors become one red line and exit 1."""
    from relaytrain.errors import RelayError

    try:
        yield
    except RelayError as exc:
        _fail(str(exc))


def _steps(steps: list[int]) -> str:
    return ", ".join(map(str, steps)) or "-"


def _print_backups(reports: list[Any]) -> None:
    table = Table("run", "uploaded", "already there", "invalid locally", "failed", "cleaned up")
    for r in reports:
        table.add_row(r.run_id, _steps(r.uploaded), _steps(r.already), _steps([s for s, _ in r.invalid]),
                      _steps([s for s, _ in r.failed]), _steps(r.cleaned))
    console.print(table)
    for r in reports:
        for step, reason in r.invalid:
            err_console.print(f"[yellow]warning:[/yellow] {r.run_id} step {step} not backed up: {reason}",
                              highlight=False)
        for step, reason in r.failed:
            err_console.print(f"[red]error:[/red] {r.run_id} step {step}: {reason}", highlight=False)
    if any(not r.ok for r in reports):
        raise typer.Exit(1)


@sync_app.command()
def backup(
    run_id: Annotated[str, typer.Argument(help="The run whose checkpoints to back up.")],
    to: Annotated[str, typer.Option("--to", help="Store URI: s3://bucket/prefix, hf://user/repo or a path.")],
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    endpoint_url: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Upload every valid local checkpoint of RUN_ID (verified); skip those already stored."""
    from relaytrain.artifacts.sync import backup_run, checkpoints_dir

    if not checkpoints_dir(workdir, _run_id(run_id)).is_dir():
        _bad(f"no run {run_id!r} in {workdir / 'runs'}", "'RUN_ID'")
    store = _open(to, endpoint_url, region, "'--to'")
    with _errors(), _transfers() as progress:
        report = backup_run(store, workdir, run_id, progress)
    _print_backups([report])


@sync_app.command("backup-all")
def backup_all(
    to: Annotated[str, typer.Option("--to", help="Store URI: s3://bucket/prefix, hf://user/repo or a path.")],
    cleanup: Annotated[bool, typer.Option("--cleanup", help="Then delete local checkpoints that are durable.")] = False,
    keep_latest: Annotated[bool, typer.Option("--keep-latest/--no-keep-latest",
                                              help="With --cleanup, keep each run's newest local checkpoint.")] = True,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    endpoint_url: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Back up every run in the workdir; with --cleanup, delete the local copies the store
    holds and verifies (never one the store lacks)."""
    from relaytrain.artifacts.sync import backup_all as run_all
    from relaytrain.artifacts.sync import local_runs

    if not local_runs(workdir):
        _bad(f"no runs with checkpoints in {workdir / 'runs'}", "'--workdir'")
    store = _open(to, endpoint_url, region, "'--to'")
    with _errors(), _transfers() as progress:
        reports = run_all(store, workdir, cleanup=cleanup, keep_latest=keep_latest, progress=progress)
    _print_backups(reports)


@sync_app.command("list-backups")
def list_backups(
    uri: Annotated[str, typer.Argument(help="Store URI: s3://bucket/prefix, hf://user/repo or a path.")],
    run: Annotated[str | None, typer.Option("--run", help="Only this run.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    endpoint_url: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """List the runs and checkpoints in a store, with sizes."""
    from relaytrain.artifacts.sync import list_backups as listing

    store = _open(uri, endpoint_url, region, "'URI'")
    runs = [_run_id(run)] if run is not None else None
    with _errors():
        found = listing(store, runs)
    if as_json:
        console.print_json(json.dumps({run_id: [vars(c) for c in items] for run_id, items in found.items()}))
        return
    table = Table("run", "step", "size", "files", "epoch")
    for run_id, items in found.items():
        for item in items:
            table.add_row(run_id, str(item.step), _size(item.size), str(item.files),
                          "-" if item.epoch is None else str(item.epoch))
        if not items:
            table.add_row(run_id, "-", "-", "-", "-")
    console.print(table)
    total = sum(item.size for items in found.values() for item in items)
    console.print(f"{len(found)} run(s), {sum(map(len, found.values()))} checkpoint(s), {_size(total)}")


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


@sync_app.command()
def restore(
    run_id: Annotated[str, typer.Argument(help="The run to restore.")],
    from_: Annotated[str, typer.Option("--from", help="Store URI to restore from.")],
    to: Annotated[Path | None, typer.Option("--to", help="Workdir to restore into (default: --workdir).")] = None,
    step: Annotated[int | None, typer.Option("--step", min=0, help="Only this step (default: all).")] = None,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    endpoint_url: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Download the checkpoints of RUN_ID into <DIR>/runs/RUN_ID/checkpoints/, verified, and
    set `latest`. A corrupt object aborts, naming the file."""
    from relaytrain.artifacts.sync import restore_run

    store = _open(from_, endpoint_url, region, "'--from'")
    dest = to if to is not None else workdir
    with _errors():
        steps = store.list_checkpoints(_run_id(run_id))
    if not steps:
        _bad(f"{from_} holds no checkpoint of run {run_id!r}", "'RUN_ID'")
    if step is not None and step not in steps:
        _bad(f"{from_} holds no step {step} of run {run_id!r} (it holds: {_steps(steps)})", "'--step'")
    with _errors(), _transfers() as progress:
        report = restore_run(store, run_id, dest, step=step, progress=progress)
    console.print(f"restored {_steps(report.restored)}; already present {_steps(report.already)}; "
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
            _bad("--keep-best needs --evals DIR (a folder of <dataset>/consolidated_metrics.csv)", "'--evals'")
        try:
            best_steps(evals, keep_best)
        except ValueError as exc:
            _bad(str(exc), "'--keep-best'")
    elif evals is not None:
        _bad("--evals is only used with --keep-best", "'--evals'")
    store = _open(store_uri, endpoint_url, region, "'--store'")
    with _errors():
        try:
            report = prune_store(store, run_id, keep_last=keep_last, keep_every=keep_every, keep_best=keep_best,
                                 evals_dir=evals, dry_run=dry_run)
        except ValueError as exc:
            _bad(str(exc), "'--keep-best'")
    verb = "would delete" if dry_run else "deleted"
    best = "".join(f"; best: step {s} ({abs(v):g})" for s, v in report.best.items())
    console.print(f"{run_id}: kept {_steps(report.kept)}; {verb} {_steps(report.deleted)}{best}", highlight=False)


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
    from relaytrain.errors import ArtifactError

    if not (run_root / "checkpoints").is_dir():
        _bad(f"{run_root} has no checkpoints/ folder", "'--run-root'")
    try:
        parse_hf_uri(f"hf://{repo_id}@{branch}")
    except ArtifactError as exc:
        _bad(str(exc), "'--repo-id'")
    if trajectories is not None and not trajectories.is_dir():
        _bad(f"{trajectories} is not a folder", "'--trajectories'")
    with _errors(), _transfers() as progress:
        try:
            result = push_latest(run_root, repo_id, branch, parent_commit=parent_commit, trajectories_dir=trajectories,
                                 dry_run=dry_run, progress=progress(f"push {repo_id}"))
        except ValueError as exc:
            _bad(str(exc), "'--run-root'")
    what = "planned (dry run)" if dry_run else f"commit {result.commit or '(unchanged)'}"
    console.print(f"step {result.step} -> {result.uri}: {what}", highlight=False)
