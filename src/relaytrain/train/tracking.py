"""The built-in trainers' metrics in TensorBoard, W&B and MLflow (``report_to``), one experiment per
run across all its machines and attempts.

Usage (``run_sft`` and ``run_grpo`` do this)::

    trackers = open_trackers(config, contract, start_step=session.step)   # after the resume
    trackers.log(step, {"loss": 0.5, "lr": 1e-3})                         # every progress line
    trackers.flush()                                                      # before each checkpoint
    trackers.close()

Everything is written under the run's ``tracking/`` folder (``RunLayout.tracking``): the worker
stores it with each durable checkpoint and restores it on the next machine before the trainer
starts, so a resumed attempt continues the same experiment. Each tracker is rewound to the step
the attempt starts from, so a reader sees every step once, from the attempt that made it durable:

- ``tensorboard/``: a ``SummaryWriter`` opened with ``purge_step = start + 1``; TensorBoard's
  readers drop the events an earlier attempt wrote past ``start``.
- ``wandb/``: run id derived from the run id (``wandb_run_id``), offline unless ``WANDB_MODE``
  says otherwise; an attempt that finds an earlier one's run folder continues it with W&B's
  rewind, ``resume_from="<id>?_step=<start>"`` (recorded in the offline run, applied on sync).
- ``mlflow/``: a SQLite store (``mlflow.db``) unless ``MLFLOW_TRACKING_URI`` is set; the run is
  found by its tag ``relaytrain.run_id`` and resumed, its points past ``start`` deleted. MLflow
  writes to ``.live.db``; ``flush`` copies it, consistently (SQLite's backup), to ``mlflow.db``,
  the file that travels, so a half-written database never leaves the machine.

A tracker that is not installed is a ``ConfigError`` naming the package (a permanent failure at
start). Public API: ``open_trackers``, ``Trackers``, ``wandb_run_id``, ``MLFLOW_TAG``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import sqlite3
import time
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any, Protocol

from relaytrain.config import GRPORun, SFTRun, run_config_dict
from relaytrain.contract import Contract, RunLayout
from relaytrain.errors import ConfigError

log = logging.getLogger(__name__)
MLFLOW_TAG = "relaytrain.run_id"
"""The MLflow run tag that names the relaytrain run (how a resumed attempt finds its run)."""
WANDB_FLUSH_S = 1.0
"""How often W&B writes its run file (wandb ≥ 0.31; older ones write it in 32 KiB blocks)."""
EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny"}
"""The package each tracker needs (``pip install 'relaytrain[<tracker>]'`` installs it)."""


class Tracker(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class Trackers:
    """The run's trackers, as one. Only finite numbers are logged: a metric that is None, a string,
    a flag or NaN is left out of that step."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        numbers = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
        if numbers:
            for tracker in self.trackers:
                tracker.log(step, numbers)

    def flush(self) -> None:
        for tracker in self.trackers:
            tracker.flush()

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def open_trackers(config: SFTRun | GRPORun, contract: Contract, start_step: int) -> Trackers:
    """The trackers ``config.report_to`` names, writing under the run's ``tracking/`` folder and
    rewound to ``start_step`` (the step the attempt starts from: 0, or the resumed checkpoint's)."""
    folder = RunLayout(contract.run_root).tracking
    opened: list[Tracker] = []
    try:
        for name in config.report_to:
            if name == "tensorboard":
                opened.append(_TensorBoard(folder / "tensorboard", start_step))
            elif name == "wandb":
                opened.append(_WandB(folder, config, start_step))
            else:
                opened.append(_MLflow(folder / "mlflow", config, start_step))
    except BaseException:
        Trackers(opened).close()
        raise
    if opened:
        log.info("reporting to %s from step %d (files in %s)", ", ".join(config.report_to), start_step, folder,
                 extra={"run_id": config.run_id, "epoch": contract.epoch})
    return Trackers(opened)


def _missing(tracker: str, exc: ImportError) -> ConfigError:
    return ConfigError(f"report_to: {tracker} needs the package {EXTRAS[tracker]}, which is not installed ({exc}); "
                       f"pip install 'relaytrain[{tracker}]' on the workers, or leave {tracker} out of report_to")


class _TensorBoard:
    def __init__(self, folder: Path, start_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise _missing("tensorboard", exc) from None
        # purge_step: readers drop what earlier attempts wrote at steps ≥ start + 1.
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=start_step + 1, flush_secs=30)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def wandb_run_id(run_id: str) -> str:
    """The W&B run id of a relaytrain run: the run id itself when it fits W&B's 64 characters,
    else its first 55 and 8 hex digits of its sha256."""
    if len(run_id) <= 64:
        return run_id
    return f"{run_id[:55]}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"


class _WandB:
    def __init__(self, folder: Path, config: SFTRun | GRPORun, start_step: int) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise _missing("wandb", exc) from None
        run_id = wandb_run_id(config.run_id)
        folder.mkdir(parents=True, exist_ok=True)
        earlier = [p for p in (folder / "wandb").glob(f"*run-*-{run_id}") if p.is_dir() and not p.is_symlink()]
        where = {"resume_from": f"{run_id}?_step={start_step}"} if earlier else {"id": run_id}
        settings: dict[str, Any] = {"console": "off", "silent": True}
        if "x_transaction_log_flush_interval" in wandb.Settings.model_fields:  # wandb ≥ 0.31
            # Written to the run file every second (default 15 s, older: only when a 32 KiB block
            # fills), so the copy stored with a checkpoint holds the steps before it.
            settings["x_transaction_log_flush_interval"] = WANDB_FLUSH_S
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "relaytrain"), name=config.run_id, dir=str(folder),
            mode=None if "WANDB_MODE" in os.environ else "offline", config=run_config_dict(config),
            settings=wandb.Settings(**settings), **where,
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def flush(self) -> None:
        return  # W&B writes its run file on its own; finish() completes it

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, folder: Path, config: SFTRun | GRPORun, start_step: int) -> None:
        try:
            from mlflow import MlflowClient
        except ImportError as exc:
            raise _missing("mlflow", exc) from None
        self.live, self.snapshot = folder / ".live.db", folder / "mlflow.db"
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        self.local = not uri
        if self.local:
            folder.mkdir(parents=True, exist_ok=True)
            if not self.live.exists() and self.snapshot.exists():  # restored from the store on this machine
                shutil.copyfile(self.snapshot, self.live)
            uri = f"sqlite:///{self.live}"
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "relaytrain")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (experiment.experiment_id if experiment is not None else self.client.create_experiment(
            name, artifact_location=(folder / "artifacts").as_uri() if self.local else None))
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`{MLFLOW_TAG}` = '{config.run_id}'",
                                        max_results=1)
        if found:
            self.run_uuid = found[0].info.run_id
            if self.local:
                _rewind_sqlite(self.live, self.run_uuid, start_step)
            else:
                log.warning("MLflow at %s: points an earlier attempt logged after step %d are kept (only the "
                            "local store is rewound)", uri, start_step)
            self.client.update_run(self.run_uuid, status="RUNNING")
        else:
            self.run_uuid = self.client.create_run(experiment_id, run_name=config.run_id,
                                                   tags={MLFLOW_TAG: config.run_id}).info.run_id
            self._log_params(config)

    def _log_params(self, config: SFTRun | GRPORun) -> None:
        from mlflow.entities import Param

        flat: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, inner in value.items():
                    walk(f"{prefix}.{key}" if prefix else key, inner)
            else:
                flat[prefix] = str(value)[:6000]

        walk("", run_config_dict(config))
        params = [Param(k, v) for k, v in sorted(flat.items())]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_uuid, params=params[i:i + 100])

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_uuid, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def flush(self) -> None:
        if not self.local:
            return
        tmp = self.snapshot.with_name(self.snapshot.name + ".tmp")  # *.tmp never leaves the machine
        tmp.unlink(missing_ok=True)
        with closing(sqlite3.connect(self.live)) as source, closing(sqlite3.connect(tmp)) as copy:
            source.backup(copy)
        os.replace(tmp, self.snapshot)

    def close(self) -> None:
        self.client.set_terminated(self.run_uuid)
        self.flush()


def _rewind_sqlite(db: Path, run_uuid: str, step: int) -> None:
    """Delete the run's metric points after ``step`` from MLflow's SQLite store, and recompute its
    latest values as MLflow orders them (step, then timestamp, then value). MLflow has no API to
    delete points; these are its ``metrics`` and ``latest_metrics`` tables."""
    with closing(sqlite3.connect(db)) as con, con:
        con.execute("DELETE FROM metrics WHERE run_uuid = ? AND step > ?", (run_uuid, step))
        con.execute("DELETE FROM latest_metrics WHERE run_uuid = ?", (run_uuid,))
        con.execute(
            """INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)
               SELECT key, value, timestamp, step, is_nan, run_uuid FROM (
                   SELECT *, ROW_NUMBER() OVER (PARTITION BY key ORDER BY step DESC, timestamp DESC, value DESC) AS n
                   FROM metrics WHERE run_uuid = ?) WHERE n = 1""",
            (run_uuid,),
        )
