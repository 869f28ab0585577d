"""The built-in trainers under real workers: a hand-off mid-run changes no bit of the result."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.integration.test_sft_resume import digests, finish, start
from tests.support.commander import wait_until

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow


def test_sft_handed_off_mid_run_ends_bit_identical_to_a_straight_run(cluster, tmp_path):
    steps = 40
    straight = start(tmp_path / "straight", steps, "--checkpoint-every", "10")
    cluster.client.submit({
        "run_id": "sft-relay", "kind": "sft", "model": "tiny", "data": {"builtin": "arithmetic"},
        "max_steps": steps, "checkpoint": {"every_steps": 10, "keep_last": 10},
        "lease": {"ttl_s": 3, "margin_s": 1.5, "grace_s": 1}, "store": str(cluster.store),
    })
    cluster.worker("a")
    cluster.worker("b")
    wait_until(lambda: (c := cluster.run("sft-relay").latest_checkpoint) and c.step >= 10, 120, "a durable step")
    victim = cluster.holder("sft-relay")
    victim.signal(signal.SIGKILL)
    run = cluster.wait_status("sft-relay", ("succeeded", "failed"), timeout_s=180)
    assert run.status == "succeeded", cluster.logs()
    assert [a.worker_id != victim.worker_id for a in run.attempts] == [False, True]
    assert 0 < run.attempts[1].step_start < steps
    finish(straight, tmp_path / "straight")
    relayed = digests(Path(run.latest_checkpoint.uri.removeprefix("file://")))
    direct = digests(tmp_path / "straight" / f"step_{steps:08d}")
    assert relayed.keys() == direct.keys()
    assert [k for k in relayed if relayed[k] != direct[k]] == []
