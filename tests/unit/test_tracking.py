"""The trackers' rules that need no training run: W&B run ids, and which metrics are logged
(read back with TensorBoard's own reader)."""

from __future__ import annotations

import math

import pytest

from relaytrain.config import SFTRun
from relaytrain.contract import Contract
from relaytrain.train.tracking import open_trackers, wandb_run_id


def test_the_wandb_id_is_the_run_id_when_it_fits():
    assert wandb_run_id("arith-sft.v2") == "arith-sft.v2"
    long = "a" * 100
    derived = wandb_run_id(long)
    assert len(derived) == 64 and derived.startswith("a" * 55 + "-") and derived == wandb_run_id(long)
    assert wandb_run_id("a" * 99 + "b") != derived


def test_only_finite_numbers_are_logged(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("tensorboard")
    from tests.support.trackers import tensorboard_series

    config = SFTRun(run_id="r", kind="sft", max_steps=3, report_to=["tensorboard"])
    trackers = open_trackers(config, Contract.local(tmp_path), start_step=0)
    trackers.log(1, {"loss": 0.5, "tokens": 7, "note": "text", "missing": None, "nan": math.nan, "done": True})
    trackers.log(2, {"loss": 0.25})
    trackers.close()
    assert tensorboard_series(tmp_path / "tracking" / "tensorboard") == {
        "loss": [(1, 0.5), (2, 0.25)], "tokens": [(1, 7.0)]}
