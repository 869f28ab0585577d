"""The elastic rollout pool end to end, with real processes on loopback: a commander, training
workers (``relay worker``) and rollout workers (``relay rollout-worker``), killed with real signals.

What must hold, whatever is killed: every group of the run's data order is trained exactly once
(read back from the trajectory files in the store), groups held by a dead rollout worker are
handed out again, rollout workers follow the run to its new manager after a hand-off, and the
ready-but-untrained groups of the checkpoint the heir resumes from are trained once.
"""

from __future__ import annotations

import json
import signal
import statistics
from pathlib import Path
from typing import Any

import pytest

from relaytrain.api.status import RunStatus
from relaytrain.errors import NotFound
from tests.support.commander import wait_until
from tests.support.grpo import reward_file
from tests.support.relay import RolloutWorkerProc

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

RUN = "grpo-pool"
PROMPTS, GENERATIONS = 4, 4


def pool_run(tmp_path: Path, store: Path, *, max_steps: int, every: int, **rollout: Any) -> dict[str, Any]:
    return {
        "run_id": RUN, "kind": "grpo", "model": "tiny", "max_steps": max_steps,
        "checkpoint": {"every_steps": every, "keep_last": 100},
        "lease": {"ttl_s": 3, "margin_s": 1.5, "grace_s": 1},
        "retry": {"max_retries": 3, "backoff_base_s": 0.2, "backoff_cap_s": 1},
        "store": str(store),
        "trajectories": {"save": True},
        "trainer": {"learning_rate": 3e-3, "prompts_per_step": PROMPTS, "num_generations": GENERATIONS,
                    "max_new_tokens": 16, "seed": 5, "rewards": [{"name": reward_file(tmp_path / "rewards")}]},
        "rollout": {"max_staleness": 8, "lease_s": 30, **rollout},
    }


def trained_groups(store: Path) -> list[int]:
    """Every group id in the run's trajectory files, one entry per time it was trained."""
    files = sorted(store.rglob(f"{RUN}/**/rollout_*.jsonl"))
    assert files, f"no trajectory files under {store}"
    return [json.loads(line)["group_id"] for f in files for line in f.read_text().splitlines()]


def series(client: Any, name: str) -> dict[int, float]:
    return {p.step: p.value for p in client.metrics(RUN, name=name).items}


def pool_view(client: Any) -> dict[str, Any]:
    try:
        endpoint = client.rollout_endpoint(RUN)
    except NotFound:
        return {}
    return {w.worker_id: w for w in endpoint.pool}


def freeze_holding_groups(client: Any, gen: RolloutWorkerProc, tries: int = 20) -> Any:
    """SIGSTOP ``gen`` until it is caught holding groups, as the manager sees it once it has gone quiet
    (its pool view then is settled): the worker is killed with work in hand, whatever the timing."""
    for _ in range(tries):
        gen.proc.send_signal(signal.SIGSTOP)
        quiet = wait_until(lambda: (w := pool_view(client).get(gen.worker_id)) and w.last_seen_s >= 2.5 and w, 30,
                           f"{gen.worker_id} to go quiet")
        if quiet.groups_in_flight > 0:
            return quiet
        gen.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: (w := pool_view(client).get(gen.worker_id)) and w.last_seen_s < 1.0, 30,
                   f"{gen.worker_id} to be heard from again")
    raise AssertionError(f"{gen.worker_id} was never caught holding groups in {tries} tries")


def test_rollout_workers_added_mid_run_and_one_killed_lose_nothing_and_train_nothing_twice(cluster, tmp_path) -> None:
    client = cluster.client
    rollout_token = client.create_token("pool", "rollout").token
    max_steps = 150  # long enough that the run is still going when a worker is caught holding groups
    client.submit(pool_run(tmp_path, cluster.store, max_steps=max_steps, every=10))
    cluster.worker("w1")
    cluster.wait_step(RUN, 3, timeout_s=120)
    before = series(client, "rollout/step_worker_groups")
    assert before and set(before.values()) == {0.0}, before  # alone, the trainer generates every group

    gens = [RolloutWorkerProc(cluster.commander.url, rollout_token, f"gen-{i}", tmp_path / "gens",
                              ["--run", RUN, "--max-groups", "8"]) for i in (1, 2)]
    for gen in gens:
        gen.start()
    try:
        wait_until(lambda: any(v > 0 for v in series(client, "rollout/step_worker_groups").values()), 120,
                   f"a step trained with worker-generated groups ({gens[0].log()[-2000:]})")
        victim = freeze_holding_groups(client, gens[0])
        gens[0].proc.send_signal(signal.SIGKILL)
        gens[0].proc.wait(timeout=10)
        assert victim.groups_in_flight > 0
        run = cluster.wait_status(RUN, (RunStatus.SUCCEEDED, RunStatus.FAILED), timeout_s=300)
        assert run.status == RunStatus.SUCCEEDED, cluster.logs()
    finally:
        for gen in gens:
            gen.stop()

    groups = trained_groups(cluster.store)
    assert sorted(groups) == list(range(max_steps * PROMPTS)), "a group lost or trained twice"
    requeued = series(client, "rollout/groups_requeued")
    assert requeued[max(requeued)] >= 1  # the dead worker's groups went out again
    by_source = series(client, "rollout/worker_generated")
    assert by_source[max(by_source)] > 0
    rewards = [v for _, v in sorted(series(client, "reward_mean").items())]
    assert statistics.fmean(rewards[-10:]) > statistics.fmean(rewards[:10]), rewards


def test_rollout_workers_follow_the_run_to_its_heir_and_the_checkpoints_ready_groups_are_trained_once(
        cluster, tmp_path) -> None:
    client = cluster.client
    rollout_token = client.create_token("pool", "rollout").token
    max_steps = 80
    gens = [RolloutWorkerProc(cluster.commander.url, rollout_token, f"gen-{i}", tmp_path / "gens")
            for i in (1, 2)]
    for gen in gens:
        gen.start()
    # a slow trainer (several optimizer passes a step) and fast rollout workers: ready groups pile up
    config = pool_run(tmp_path, cluster.store, max_steps=max_steps, every=4)
    config["trainer"]["num_iterations"] = 6
    client.submit(config)
    w1 = cluster.worker("w1")
    try:
        checkpoints = w1.workdir / "runs" / RUN / "checkpoints"

        def checkpoint_with_ready_groups() -> tuple[int, list[int]] | None:
            durable = client.run(RUN).latest_checkpoint
            for state in sorted(checkpoints.glob("step_*/rollout_state.json")):
                step = int(state.parent.name.removeprefix("step_"))
                ready = [g["group_id"] for g in json.loads(state.read_text())["ready"]]
                if ready and durable is not None and durable.step == step:
                    return step, ready
            return None

        step, ready = wait_until(checkpoint_with_ready_groups, 240,
                                 f"a durable checkpoint holding ready groups ({gens[0].log()[-2000:]})")
        first_epoch = client.rollout_endpoint(RUN).epoch
        w1.signal(signal.SIGKILL)
        cluster.worker("w2")
        wait_until(lambda: (e := _endpoint(client)) is not None and e.epoch > first_epoch and len(e.pool) == 2, 120,
                   "both rollout workers attached to the heir's manager")
        run = cluster.wait_status(RUN, (RunStatus.SUCCEEDED, RunStatus.FAILED), timeout_s=300)
        assert run.status == RunStatus.SUCCEEDED, cluster.logs()
        assert all(gen.proc.poll() is None for gen in gens), "a rollout worker needed a restart"
    finally:
        for gen in gens:
            gen.stop()

    groups = trained_groups(cluster.store)
    assert sorted(groups) == list(range(max_steps * PROMPTS)), "a group lost or trained twice"
    trajectories = sorted(cluster.store.rglob(f"{RUN}/**/rollout_*.jsonl"))
    after = [json.loads(line) for f in trajectories for line in f.read_text().splitlines()
             if json.loads(line)["step"] > step]
    trained_after = {line["group_id"]: line for line in after}
    assert set(ready) <= set(trained_after), "a ready group of the checkpoint was not trained after the resume"
    resumed = series(client, "rollout/step_worker_groups")
    assert any(v > 0 for s, v in resumed.items() if s > step + 2), "no worker group trained after the hand-off"


def _endpoint(client: Any) -> Any:
    try:
        return client.rollout_endpoint(RUN)
    except NotFound:
        return None
