"""What ``relay sync`` does: move a worker's checkpoints to and from a store, verified.

A worker's workdir holds ``<workdir>/runs/<run_id>/checkpoints/step_<N:08d>/`` and ``latest``
(DESIGN §5); eval runs write ``<run_root>/evals/<dataset>/consolidated_metrics.csv``.
Every function here is idempotent and resumable: a checkpoint the store (or the local
folder) already holds with the same manifest is skipped, and an interrupted transfer is
continued by the next call (see ``S3Store`` and ``HFStore``).

The commands in :mod:`relaytrain.cli.sync` only parse arguments and print; the work is here.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relaytrain.artifacts.base import ArtifactStore, ProgressFn, check_run_id
from relaytrain.checkpoint import (
    LATEST_NAME,
    check_retention,
    find_latest_valid,
    list_checkpoints,
    manifest_sha256,
    parse_manifest,
    parse_step,
    read_latest,
    remove_tree,
    step_dir_name,
    steps_to_keep,
    verify,
    write_latest,
)
from relaytrain.contract import CONSOLIDATED_METRICS as CONSOLIDATED
from relaytrain.contract import RunLayout, runs_dir
from relaytrain.errors import ArtifactError, CheckpointError

log = logging.getLogger(__name__)

ProgressFactory = Callable[[str], ProgressFn | None]
"""``factory(label)``: the progress callback for one transfer (``label`` names it), or None."""



def _no_progress(label: str) -> ProgressFn | None:
    return None


def checkpoints_dir(workdir: str | os.PathLike[str], run_id: str) -> Path:
    """``<workdir>/runs/<run_id>/checkpoints``."""
    return RunLayout.in_workdir(workdir, check_run_id(run_id)).checkpoints


def local_runs(workdir: str | os.PathLike[str]) -> list[str]:
    """Run ids with a ``checkpoints`` folder under ``<workdir>/runs``, sorted."""
    runs = runs_dir(workdir)
    if not runs.is_dir():
        return []
    return sorted(p.name for p in runs.iterdir() if not p.name.startswith(".") and RunLayout(p).checkpoints.is_dir())


def stored_sha256(store: ArtifactStore, run_id: str, steps: Iterable[int]) -> dict[int, str]:
    """sha256 of the stored manifest of each of ``steps`` (which the store lists)."""
    return {step: hashlib.sha256(store.read_manifest(run_id, step)).hexdigest() for step in steps}


@dataclass
class BackupReport:
    """What ``backup_run`` did for one run."""

    run_id: str
    uploaded: list[int] = field(default_factory=list)
    """Steps uploaded and verified in the store."""
    already: list[int] = field(default_factory=list)
    """Steps the store already held with the same manifest (not sent again)."""
    invalid: list[tuple[int, str]] = field(default_factory=list)
    """Local checkpoints that do not verify (not uploaded), with the reason."""
    failed: list[tuple[int, str]] = field(default_factory=list)
    """Uploads that failed, with the error."""
    cleaned: list[int] = field(default_factory=list)
    """Local checkpoints deleted after the backup (``cleanup``)."""

    @property
    def ok(self) -> bool:
        """Whether every valid local checkpoint is now in the store."""
        return not self.failed


def backup_run(store: ArtifactStore, workdir: str | os.PathLike[str], run_id: str,
               progress: ProgressFactory = _no_progress) -> BackupReport:
    """Upload every valid local checkpoint of ``run_id`` that the store does not already hold
    with the same manifest sha256. Invalid local checkpoints and failed uploads are reported,
    not raised (a store that cannot be reached at all raises ArtifactError before anything)."""
    out = checkpoints_dir(workdir, run_id)
    if not out.is_dir():
        raise ValueError(f"no checkpoints of run {run_id!r} in {out}")
    report = BackupReport(run_id)
    listed = set(store.list_checkpoints(run_id))
    stored = stored_sha256(store, run_id, listed.intersection(list_checkpoints(out)))
    for step in list_checkpoints(out):
        path = out / step_dir_name(step)
        check = verify(path)
        if not check.ok:
            report.invalid.append((step, check.reason or "invalid"))
            log.warning("not backing up %s: %s", path, check.reason)
            continue
        if stored.get(step) == manifest_sha256(path):
            report.already.append(step)
            continue
        try:
            store.put_checkpoint(path, run_id, step, progress(f"{run_id} {step_dir_name(step)}"))
        except ArtifactError as exc:
            report.failed.append((step, str(exc)))
            log.error("backup of %s failed: %s", path, exc)
        else:
            report.uploaded.append(step)
    return report


def cleanup_run(store: ArtifactStore, workdir: str | os.PathLike[str], run_id: str, *,
                keep_latest: bool = True) -> list[int]:
    """Delete local checkpoints of ``run_id`` that the store holds, with the same manifest,
    and that verify there; keep the newest valid local one when ``keep_latest``. Local
    checkpoints the store does not hold are never deleted. Returns the deleted steps."""
    out = checkpoints_dir(workdir, run_id)
    steps = list_checkpoints(out)
    newest = find_latest_valid(out).step if keep_latest else None
    stored = stored_sha256(store, run_id, set(store.list_checkpoints(run_id)).intersection(steps))
    deleted = []
    for step in steps:
        path = out / step_dir_name(step)
        if step == newest or step not in stored:
            continue
        try:
            same = manifest_sha256(path) == stored[step]
        except CheckpointError:
            continue
        if same and store.verify_checkpoint(run_id, step).ok:
            remove_tree(path)
            deleted.append(step)
            log.info("deleted local %s (durable in %r)", path, store)
    if deleted:
        _repoint_latest(out)
    return deleted


def _repoint_latest(out: Path) -> None:
    """Point ``latest`` at the newest remaining checkpoint, or remove it if none is left."""
    remaining = list_checkpoints(out)
    try:
        current = read_latest(out)
    except CheckpointError:
        current = None
    if current is not None and parse_step(current) in remaining:
        return
    if remaining:
        write_latest(out, remaining[-1])
    else:
        (out / LATEST_NAME).unlink(missing_ok=True)


def backup_all(store: ArtifactStore, workdir: str | os.PathLike[str], *, cleanup: bool = False,
               keep_latest: bool = True, progress: ProgressFactory = _no_progress) -> list[BackupReport]:
    """``backup_run`` for every run in the workdir; with ``cleanup``, then ``cleanup_run`` for
    each run whose backup had no failure."""
    reports = []
    for run_id in local_runs(workdir):
        report = backup_run(store, workdir, run_id, progress)
        if cleanup and report.ok:
            report.cleaned = cleanup_run(store, workdir, run_id, keep_latest=keep_latest)
        reports.append(report)
    return reports


@dataclass(frozen=True)
class StoredCheckpoint:
    """One checkpoint in a store, as ``list_backups`` shows it."""

    step: int
    size: int
    """Bytes of every file, manifest included."""
    files: int
    epoch: int | None


def list_backups(store: ArtifactStore, run_ids: Iterable[str] | None = None) -> dict[str, list[StoredCheckpoint]]:
    """The checkpoints of each run in the store (every run, or ``run_ids``), ascending."""
    found: dict[str, list[StoredCheckpoint]] = {}
    for run_id in (store.list_runs() if run_ids is None else run_ids):
        items = []
        for step in store.list_checkpoints(run_id):
            data = store.read_manifest(run_id, step)
            try:
                manifest = parse_manifest(data)
            except CheckpointError as exc:
                raise ArtifactError(f"{store.uri_for(run_id, step)}: {exc}") from exc
            files = manifest["files"]
            items.append(StoredCheckpoint(step, sum(e["size"] for e in files.values()) + len(data), len(files),
                                          manifest.get("epoch")))
        found[run_id] = items
    return found


@dataclass
class RestoreReport:
    """What ``restore_run`` did."""

    run_id: str
    folder: Path
    """``<dest>/runs/<run_id>/checkpoints``."""
    restored: list[int] = field(default_factory=list)
    already: list[int] = field(default_factory=list)
    """Steps present locally with the stored manifest, verified (not downloaded)."""
    latest: int | None = None


def restore_run(store: ArtifactStore, run_id: str, dest_workdir: str | os.PathLike[str], *,
                step: int | None = None, progress: ProgressFactory = _no_progress) -> RestoreReport:
    """Download every stored checkpoint of ``run_id`` (or only ``step``) into
    ``<dest_workdir>/runs/<run_id>/checkpoints/``, verified, and point ``latest`` at the newest
    restored step (unless it already names a newer checkpoint that exists).

    A corrupt object aborts with ArtifactError naming the file; checkpoints restored before
    it stay. ValueError if the store holds no such checkpoint.
    """
    steps = store.list_checkpoints(run_id)
    if step is not None:
        if step not in steps:
            held = ", ".join(map(str, steps)) or "none"
            raise ValueError(f"the store holds no step {step} of run {run_id!r} (it holds: {held})")
        steps = [step]
    if not steps:
        raise ValueError(f"the store holds no checkpoint of run {run_id!r}")
    out = checkpoints_dir(dest_workdir, run_id)
    report = RestoreReport(run_id, out)
    for current in steps:
        local = out / step_dir_name(current)
        sha = hashlib.sha256(store.read_manifest(run_id, current)).hexdigest()
        if local.is_dir() and _local_sha(local) == sha and verify(local).ok:
            report.already.append(current)
            continue
        store.get_checkpoint(run_id, current, local, progress(f"{run_id} {step_dir_name(current)}"),
                             expected_manifest_sha256=sha)
        report.restored.append(current)
    newest = max(steps)
    try:
        named = read_latest(out)
    except CheckpointError:
        named = None
    named_step = parse_step(named) if named else None
    if named_step is None or named_step < newest or not (out / named).is_dir():
        write_latest(out, newest)
        named_step = newest
    report.latest = named_step
    return report


def _local_sha(path: Path) -> str | None:
    with contextlib.suppress(CheckpointError):
        return manifest_sha256(path)
    return None


@dataclass
class PruneReport:
    """What ``prune_store`` did (or would do, in a dry run)."""

    run_id: str
    kept: list[int] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    best: dict[int, float] = field(default_factory=dict)
    """The metric of each step kept as best."""


def prune_store(store: ArtifactStore, run_id: str, *, keep_last: int, keep_every: int | None = None,
                keep_best: str | None = None, evals_dir: str | os.PathLike[str] | None = None,
                dry_run: bool = False) -> PruneReport:
    """Delete stored checkpoints of ``run_id`` but the last ``keep_last``, every step divisible
    by ``keep_every``, and the best one by ``keep_best`` (read from ``evals_dir``; see
    ``best_steps``). The newest stored checkpoint is never deleted."""
    check_retention(keep_last, keep_every, allow_zero=False)
    if keep_best is not None and evals_dir is None:
        raise ValueError("keep_best needs the folder of eval results (evals_dir)")
    scores = best_steps(Path(evals_dir), keep_best) if keep_best is not None and evals_dir is not None else {}
    steps = store.list_checkpoints(run_id)
    report = PruneReport(run_id)
    if not steps:
        return report
    protect = {steps[-1]}
    if keep_best is not None:
        ranked = {step: scores[step] for step in steps if step in scores}
        if not ranked:
            raise ValueError(f"no stored step of run {run_id!r} has a score for {keep_best!r} in {evals_dir}")
        best = max(ranked, key=lambda step: (ranked[step], step))
        protect.add(best)
        report.best = {best: ranked[best]}
    report.kept = steps_to_keep(steps, keep_last, keep_every, protect)
    report.deleted = [step for step in steps if step not in report.kept]
    if not dry_run:
        for step in report.deleted:
            store.delete_checkpoint(run_id, step)
            log.info("pruned %s", store.uri_for(run_id, step))
    return report


def best_steps(evals_dir: Path, spec: str) -> dict[int, float]:
    """Scores by step of the metric ``spec`` = ``[DATASET/]NAME[:max|min]`` from the eval
    tables ``<evals_dir>/<dataset>/consolidated_metrics.csv`` (also found one level down, in
    ``<evals_dir>/evals/``). Higher is better unless ``:min`` (scores are then negated, so the
    best is always the highest). Rows whose status is not ``ok`` are ignored.
    ValueError naming the problem if no table has the metric, or several do."""
    name, _, direction = spec.partition(":")
    if direction not in ("", "max", "min") or not name:
        raise ValueError(f"metric must be [DATASET/]NAME[:max|min], got {spec!r}")
    dataset, _, metric = name.rpartition("/")
    tables = sorted({*evals_dir.glob(f"*/{CONSOLIDATED}"), *evals_dir.glob(f"evals/*/{CONSOLIDATED}")})
    if (evals_dir / CONSOLIDATED).is_file():
        tables.append(evals_dir / CONSOLIDATED)
    if not tables:
        raise ValueError(f"no */{CONSOLIDATED} under {evals_dir}: evaluate the run first (relay eval)")
    if dataset:
        tables = [t for t in tables if t.parent.name == dataset]
    with_metric = [t for t in tables if metric in _header(t)]
    if not with_metric:
        raise ValueError(f"no eval table under {evals_dir} has the metric {name!r}")
    if len(with_metric) > 1:
        names = ", ".join(t.parent.name for t in with_metric)
        raise ValueError(f"metric {metric!r} is in several eval tables ({names}): write DATASET/{metric}")
    sign = -1.0 if direction == "min" else 1.0
    scores = {}
    with open(with_metric[0], newline="") as handle:
        for row in csv.DictReader(handle):
            value = _number(row.get(metric))
            step = _number(row.get("step"))
            if value is not None and step is not None and row.get("status", "ok") == "ok":
                scores[int(step)] = sign * value
    return scores


def _header(path: Path) -> list[str]:
    with open(path, newline="") as handle:
        return next(csv.reader(handle), [])


def _number(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class PushResult:
    """What ``push_latest`` pushed."""

    step: int
    uri: str
    commit: str | None
    """The commit holding the checkpoint (the new one, or the head that already held it; None in
    a dry run)."""


def push_latest(run_root: str | os.PathLike[str], repo_id: str, branch: str = "main", *,
                parent_commit: str | None = None, trajectories_dir: str | os.PathLike[str] | None = None,
                dry_run: bool = False, progress: ProgressFn | None = None, api: Any = None) -> PushResult:
    """Push the newest valid checkpoint of the run at ``run_root`` (``<run_root>/checkpoints``)
    to the Hub repository ``repo_id`` on ``branch`` as one commit (``HFStore``; the run id is
    the folder's name). ``parent_commit``: the anchor (``HFStore``): refuse the commit if a
    newer lease epoch committed a checkpoint of the run after it, or if it is not on the branch."""
    from relaytrain.artifacts.hf import HFStore

    root = Path(run_root)
    found = find_latest_valid(RunLayout(root).checkpoints)
    if found.path is None or found.step is None:
        raise ValueError(f"no valid checkpoint in {root / 'checkpoints'}")
    store = HFStore(repo_id, branch, api=api, dry_run=dry_run, parent_commit=parent_commit)
    uri = store.put_checkpoint(found.path, check_run_id(root.resolve().name), found.step, progress,
                               trajectories_dir=trajectories_dir)
    return PushResult(found.step, uri, store.last_commit)
