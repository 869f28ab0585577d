"""Read what the trackers wrote, with their own readers: TensorBoard's ``EventAccumulator``, W&B's
offline run files (W&B's own reader of its ``.wandb`` files, ``tests/support/wandb_datastore.py``) and
MLflow's client on the SQLite store. Each returns ``{metric: [(step, value), …]}`` as a user of
that tracker would see it."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

Series = dict[str, list[tuple[int, float]]]


def tensorboard_series(folder: Path) -> Series:
    """Every scalar in the event files of ``folder``, after TensorBoard's purge of orphaned steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def wandb_runs(folder: Path, run_id: str) -> list[dict]:
    """The offline runs of ``run_id`` under ``folder/wandb``, oldest first: ``{"branch_step": N or
    None, "history": [{"_step": …, metric: …}, …]}``."""
    from wandb.proto import wandb_internal_pb2 as pb

    from tests.support import wandb_datastore as datastore

    runs = []
    for path in sorted((folder / "wandb").glob(f"*run-*-{run_id}/run-{run_id}.wandb")):
        store = datastore.DataStore()
        store.open_for_scan(str(path))
        run: dict = {"branch_step": None, "history": [], "start": 0.0}
        while (data := store.scan_data()) is not None:
            record = pb.Record()
            record.ParseFromString(data)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run["start"] = record.run.start_time.ToNanoseconds()
                for item in record.run.config.update:
                    if item.key == "_wandb":
                        branch = json.loads(item.value_json).get("branch_point")
                        run["branch_step"] = branch["step"] if branch else None
            elif kind == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                run["history"].append({**row, "_step": record.history.step.num})
        runs.append(run)
    return sorted(runs, key=lambda r: r["start"])


def wandb_series(folder: Path, run_id: str) -> Series:
    """The run's history as W&B shows it once its offline runs are synced: each run that branches
    (W&B's rewind, ``resume_from``) at step N keeps its predecessors' history up to N."""
    series: Series = {}
    for run in wandb_runs(folder, run_id):
        if run["branch_step"] is not None:
            series = {k: [(s, v) for s, v in points if s <= run["branch_step"]] for k, points in series.items()}
        for row in run["history"]:
            for key, value in row.items():
                if not key.startswith("_"):
                    series.setdefault(key, []).append((row["_step"], value))
    return series


def mlflow_series(db: Path, run_id: str) -> Series:
    """The metric histories of the MLflow run tagged with ``run_id`` in the SQLite store ``db``
    (there must be exactly one)."""
    from mlflow import MlflowClient

    from relaytrain.train.tracking import MLFLOW_TAG

    # MLflow keeps one engine per URI for the process: read a copy under a new name, or a second
    # read of a replaced file would see the first one's.
    with tempfile.TemporaryDirectory(prefix="mlflow-read-") as tmp:
        copy = Path(tmp) / "mlflow.db"
        shutil.copyfile(db, copy)
        client = MlflowClient(tracking_uri=f"sqlite:///{copy}")
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments, filter_string=f"tags.`{MLFLOW_TAG}` = '{run_id}'")
        assert len(runs) == 1, f"{len(runs)} MLflow runs tagged {run_id}"
        return {k: sorted((m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, k))
                for k in runs[0].data.metrics}


def steps_unique_and_increasing(series: Series) -> dict[str, list[int]]:
    """The metrics whose steps are not strictly increasing, with their steps (empty: all are)."""
    return {k: [s for s, _ in points] for k, points in series.items()
            if any(b[0] <= a[0] for a, b in zip(points, points[1:], strict=False))}
