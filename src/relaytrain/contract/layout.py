"""Where a run lives on a worker's machine, and how its trajectory files are named.

    <workdir>/runs/<run_id>/            mode 0700: the worker's user's alone
        checkpoints/              RELAY_OUTPUT_DIR (step_<N:08d>/, latest)
        init/<source run>/        an init_from checkpoint, fetched
        logs/attempt_<epoch>/     stdout.log, stderr.log, trainer.pid
        progress/attempt_<epoch>.jsonl
        rollouts/                 RL trajectories (the run file's trajectories.subdir)
        tracking/                 the built-in trainers' trackers (report_to): tensorboard/,
                                  wandb/, mlflow/; travels with the run through its store
        run_config.json           the run file, as JSON (mode 0600; secrets only as references)
        eval_checkpoints.json     for an eval run: the checkpoints to score (fetched, verified)
        evals/<dataset>/          for an eval run: step_<N>/{metrics.json, completions.jsonl,
                                  summary.json} and consolidated_metrics.csv
        STOP                      the stop file
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path

DEFAULT_TRAJECTORY_SUBDIR = "rollouts"
DEFAULT_TRAJECTORY_PATTERN = "rollout_{rollout_id:08d}.jsonl"
TRACKING_SUBDIR = "tracking"
"""The run root's folder for TensorBoard, W&B and MLflow files, and its name among the run's
files in the store (``<store>/<run_id>/files/tracking/…``)."""
RUN_ROOT_MODE = 0o700
"""A run root's mode on a worker: it holds the run file, the trainer's output and its checkpoints."""
CONSOLIDATED_METRICS = "consolidated_metrics.csv"
"""An eval run's table: one row per step, one column per metric."""


class RunLayout:
    """The folders and files of one run under its ``root``; ``epoch`` picks the attempt's logs
    and progress file. On a worker the root is ``<workdir>/runs/<run_id>`` (``in_workdir``)."""

    def __init__(self, root: str | Path, epoch: int = 0, trajectory_subdir: str = DEFAULT_TRAJECTORY_SUBDIR) -> None:
        self.root = Path(root).resolve()
        self.run_id = self.root.name
        self.epoch = epoch
        self.checkpoints = self.root / "checkpoints"
        self.init = self.root / "init"
        self.logs_root = self.root / "logs"
        self.logs = self.attempt_logs(epoch)
        self.progress = self.root / "progress" / f"attempt_{epoch}.jsonl"
        self.stop_file = self.root / "STOP"
        self.config = self.root / "run_config.json"
        self.eval_checkpoints = self.root / "eval_checkpoints.json"
        self.rollouts = self.root / trajectory_subdir
        self.tracking = self.root / TRACKING_SUBDIR

    @classmethod
    def in_workdir(cls, workdir: str | Path, run_id: str, epoch: int = 0,
                   trajectory_subdir: str = DEFAULT_TRAJECTORY_SUBDIR) -> RunLayout:
        """The layout of ``run_id`` on a worker whose workdir is ``workdir``."""
        return cls(runs_dir(workdir) / run_id, epoch, trajectory_subdir)

    def attempt_logs(self, epoch: int) -> Path:
        return self.logs_root / f"attempt_{epoch}"

    def logged_epochs(self) -> list[int]:
        """The epochs with a log folder here, ascending."""
        found = (re.fullmatch(r"attempt_(\d+)", p.name) for p in self.logs_root.glob("attempt_*"))
        return sorted(int(m.group(1)) for m in found if m)

    def evals(self, dataset_label: str) -> Path:
        """An eval run's results for one dataset."""
        return self.root / "evals" / dataset_label

    def make(self) -> None:
        """Create the run's folders; the run root is the worker's user's alone (its run file,
        logs and checkpoints are nobody else's on a shared machine)."""
        self.root.mkdir(mode=RUN_ROOT_MODE, parents=True, exist_ok=True)
        os.chmod(self.root, RUN_ROOT_MODE)  # also a root made before, or under a looser umask
        for folder in (self.checkpoints, self.logs, self.progress.parent, self.rollouts):
            folder.mkdir(parents=True, exist_ok=True)


def runs_dir(workdir: str | Path) -> Path:
    """``<workdir>/runs``: where a worker keeps its runs."""
    return Path(workdir).resolve() / "runs"


def check_trajectory_subdir(subdir: str) -> str:
    """``subdir`` if it is a relative folder inside the run root, else ValueError."""
    parts = Path(subdir).parts
    if (not subdir or Path(subdir).is_absolute() or ".." in parts
            or parts[0] in ("checkpoints", "logs", "progress", TRACKING_SUBDIR)):
        raise ValueError(f"must be a relative folder inside the run root (not checkpoints/logs/progress/"
                         f"{TRACKING_SUBDIR}), got {subdir!r}")
    return subdir


def check_trajectory_pattern(pattern: str) -> str:
    """``pattern`` if it is a file name with exactly one integer field ``rollout_id``
    (``rollout_{rollout_id:08d}.jsonl``), else ValueError saying what is wrong."""
    try:
        fields = [(name, spec) for _, name, spec, _ in string.Formatter().parse(pattern) if name is not None]
    except ValueError as exc:
        raise ValueError(f"not a valid format string: {exc} (got {pattern!r})") from exc
    if [name for name, _ in fields] != ["rollout_id"]:
        raise ValueError(f"needs exactly one field, {{rollout_id}}, e.g. {DEFAULT_TRAJECTORY_PATTERN!r}; "
                         f"got {pattern!r}")
    if "/" in pattern or "\\" in pattern:
        raise ValueError(f"must be a file name, without folders (got {pattern!r})")
    try:
        rendered = pattern.format(rollout_id=7)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{{rollout_id}} must format an integer: {exc} (got {pattern!r})") from exc
    if trajectory_id(pattern, rendered) != 7:
        raise ValueError(f"its names cannot be read back to a rollout id (got {pattern!r})")
    return pattern


def trajectory_name(pattern: str, rollout_id: int) -> str:
    """The file name of trajectory ``rollout_id``: ``pattern`` rendered."""
    return pattern.format(rollout_id=int(rollout_id))


def trajectory_id(pattern: str, name: str) -> int | None:
    """The rollout id a file ``name`` was rendered with from ``pattern``, or None if it was not."""
    regex = "".join(re.escape(literal) + (r"(?P<id>[+-]?\s*\d+)" if field is not None else "")
                    for literal, field, _, _ in string.Formatter().parse(pattern))
    found = re.fullmatch(regex, name)
    if found is None:
        return None
    rollout_id = int(found.group("id").replace(" ", ""))
    return rollout_id if trajectory_name(pattern, rollout_id) == name else None
