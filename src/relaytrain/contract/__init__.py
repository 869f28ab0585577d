"""The trainer contract (DESIGN §6), in one place for both sides: the worker writes it, the
built-in trainers, evaluation and any external trainer read it. Torch-free; imports only
``relaytrain.errors``.

- ``TrainerEnv`` (``to_env`` / ``from_env``) and ``VARIABLES``: every ``RELAY_*`` variable;
- ``RunLayout``: a run's folders on a worker's machine (``TRACKING_SUBDIR``: the trackers'); trajectory names
  (``trajectory_name``, ``trajectory_id``, ``check_trajectory_pattern``);
- ``ExitCode``, ``FailureClass``, ``Outcome``, ``exit_code_for`` (trainer side) and
  ``classify_exit`` (worker side), sharing one classifier; ``MachineFault`` / ``machine_fault`` /
  ``disk_full``: a failure that is the machine's, not the run's;
- the progress and event line schema (``progress_line``, ``event_line``, ``parse_line``);
- ``Contract``: the trainer's helper (stop file and signals, progress, checkpoint events).
"""

from .env import VARIABLES, TrainerEnv
from .exits import (
    DISK_FULL_ERRNOS,
    Exit,
    ExitCode,
    FailureClass,
    MachineFault,
    Outcome,
    classify_exit,
    classify_text,
    disk_full,
    exit_code_for,
    last_line,
    machine_fault,
)
from .layout import (
    CONSOLIDATED_METRICS,
    DEFAULT_TRAJECTORY_PATTERN,
    DEFAULT_TRAJECTORY_SUBDIR,
    TRACKING_SUBDIR,
    RunLayout,
    check_trajectory_pattern,
    check_trajectory_subdir,
    runs_dir,
    trajectory_id,
    trajectory_name,
)
from .lines import (
    CHECKPOINT_EVENT,
    FILE_EVENT,
    ROLLOUT_EVENT,
    Event,
    Progress,
    clean_metrics,
    event_line,
    parse_line,
    progress_line,
)
from .trainer import Contract

__all__ = [
    "CHECKPOINT_EVENT", "CONSOLIDATED_METRICS", "DISK_FULL_ERRNOS", "MachineFault", "disk_full",
    "machine_fault", "DEFAULT_TRAJECTORY_PATTERN", "DEFAULT_TRAJECTORY_SUBDIR",
    "FILE_EVENT", "ROLLOUT_EVENT", "VARIABLES", "Contract", "Event", "Exit", "ExitCode", "FailureClass", "Outcome",
    "Progress", "TRACKING_SUBDIR",
    "RunLayout", "TrainerEnv", "check_trajectory_pattern", "check_trajectory_subdir", "classify_exit",
    "classify_text", "clean_metrics", "event_line", "exit_code_for", "last_line", "parse_line", "progress_line",
    "runs_dir", "trajectory_id", "trajectory_name",
]
