"""Multi-turn GRPO against environments, end to end on the tiny model (docs/environments.md).

The start point is the tiny model taught the calculator task by SFT (examples/envs/calculator:
about 40 % of its episodes solved, most of them with a tool call). Against real openenv-core server
processes it trains multi-turn episodes with the environment's tokens out of the loss; a server that
dies mid-episode costs episodes, not the run; servers that stay down fail the run as transient, a bad
task as permanent; an in-process environment resumes bit for bit; and 20 steps of GRPO raise the
success rate by at least 10 points.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("openenv")

from relaytrain.config import GRPORun, SFTRun, parse_run_config  # noqa: E402
from relaytrain.contract import Contract, ExitCode  # noqa: E402
from relaytrain.train.grpo import GRPOSession, run_grpo  # noqa: E402
from tests.support.envs import CALCULATOR, calculator_servers  # noqa: E402
from tests.support.grpo import finish, launch, progress, state_digests  # noqa: E402

PER_STEP, G = 4, 4
HELD_OUT = [{"seed": 10**6 + i} for i in range(200)]
"""Tasks no training step draws (training seeds are 0 … env.tasks-1)."""


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def calculator_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """``env: {module: "calculator_env:make_env"}`` imports from the example's folder, here and in a trainer process."""
    monkeypatch.syspath_prepend(str(CALCULATOR))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(CALCULATOR), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture(scope="module")
def calc_sft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model after 300 SFT steps on calculator transcripts, half of them with a tool call."""
    from relaytrain.checkpoint import CheckpointManager
    from relaytrain.train.sft import SFTSession

    sys.path.insert(0, str(CALCULATOR))
    try:
        from sft_data import records
    finally:
        sys.path.remove(str(CALCULATOR))
    folder = tmp_path_factory.mktemp("calc-sft")
    data = folder / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records(4000, tool_share=0.5)))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    config = SFTRun(run_id="calc-sft", kind="sft", max_steps=300, data={"path": str(data)},
                    trainer={"batch_size": 32, "learning_rate": 2e-3})
    session = SFTSession(config, Contract.local(folder / "ckpt"))
    manager = CheckpointManager(folder / "ckpt")
    try:
        while session.step < config.max_steps:
            session.train_step()
        return Path(manager.save(session.checkpoint_state(), session.step))
    finally:
        manager.close()
        torch.set_num_threads(before)


def env_run(env: dict[str, Any], init: Path | None = None, **fields: Any) -> GRPORun:
    settings = {"prompts_per_step": PER_STEP, "num_generations": G, "max_new_tokens": 16, "learning_rate": 1e-4}
    settings.update(fields.pop("trainer", {}))
    data = {"run_id": "calc-grpo", "kind": "grpo", "max_steps": 3, "checkpoint": {"every_steps": 2},
            "trainer": settings, "env": {"max_turns": 3, "observation_template": "{text}", **env}, **fields}
    if init is not None:
        data["init_from"] = {"path": str(init)}
    return parse_run_config(data)


def trajectories(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()]


def last_metrics(root: Path) -> dict[str, float]:
    return [line["metrics"] for line in progress(root / "progress.jsonl") if "metrics" in line][-1]


def test_a_run_on_real_openenv_servers_trains_multi_turn_episodes(tmp_path: Path, calc_sft: Path) -> None:
    with calculator_servers(tmp_path, [{}, {}]) as servers:
        config = env_run({"urls": [s.url for s in servers]}, calc_sft, trajectories={"save": True})
        finish(launch(config, tmp_path / "run", 3, env={"RELAY_INIT_FROM": str(calc_sft)}))

    groups = trajectories(tmp_path / "run" / "rollouts")
    assert len(groups) == 3 * PER_STEP
    episodes = [e for group in groups for e in group["episodes"]]
    assert len(episodes) == 3 * PER_STEP * G
    for group in groups:
        assert set(group["task"]) == {"seed"} and len(group["episodes"]) == G
    for episode in episodes:  # the environment's task first, then policy and environment in turn
        assert episode[0]["role"] == "env" and episode[0]["text"].endswith("=")
        assert [t["role"] for t in episode[1:]] == ["policy", "env"] * ((len(episode) - 2) // 2) + ["policy"]
    tool_calls = [e for e in episodes if e[1]["text"].startswith("calc ")]
    assert tool_calls, "no episode called the calculator"
    for episode in tool_calls:  # the calculator's answer is in the context, read but not trained
        assert len(episode) >= 4 and episode[2]["role"] == "env" and episode[2]["text"].startswith("=")
    metrics = last_metrics(tmp_path / "run")
    assert metrics["env/episodes"] == 3 * PER_STEP * G
    assert metrics["env/retries"] == 0 and metrics["env/turns_mean"] >= 1
    assert 0 < metrics["env/step_latency_p50"] <= metrics["env/step_latency_p95"]
    assert "rewards/env_mean" in metrics


def test_a_server_that_dies_mid_episode_costs_that_episode_not_the_run(tmp_path: Path, calc_sft: Path) -> None:
    """One replica exits at the first step of a session (a real process death mid-episode): its episodes are
    played again on the other; every trained episode completed, the run finished."""
    with calculator_servers(tmp_path, [{}, {"CALC_FAULT": "exit_step:1"}]) as (good, dying):
        config = env_run({"urls": [good.url, dying.url], "health_interval_s": 0.2}, calc_sft,
                         trajectories={"save": True})
        finish(launch(config, tmp_path / "run", 3, env={"RELAY_INIT_FROM": str(calc_sft)}))
        assert dying.exited()

    metrics = last_metrics(tmp_path / "run")
    assert metrics["env/failures/connect"] >= 1 and metrics["env/retries"] >= 1
    assert metrics["env/episodes"] == 3 * PER_STEP * G  # the failed tries were neither counted nor trained
    groups = trajectories(tmp_path / "run" / "rollouts")
    assert [len(group["episodes"]) for group in groups] == [G] * (3 * PER_STEP)
    for group in groups:  # each episode ended by the environment's answer or the turn limit: none cut by a failure
        assert all(reward is not None for reward in group["rewards"])
        for episode, truncated in zip(group["episodes"], group["truncated"], strict=True):
            assert not truncated or sum(t["role"] == "policy" for t in episode) == 3


def test_environments_down_for_down_timeout_fail_the_run_as_transient_naming_them(tmp_path: Path) -> None:
    with calculator_servers(tmp_path, [{"CALC_FAULT": "exit_step:1"}] * 2) as servers:
        urls = [s.url for s in servers]
        config = env_run({"urls": urls, "down_timeout_s": 2, "health_interval_s": 0.2})
        process = launch(config, tmp_path / "run", 3)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == ExitCode.TEMPFAIL, stderr[-2000:]
    assert "EnvironmentUnavailable" in stderr and all(url in stderr for url in urls)


def test_a_task_the_environment_refuses_fails_the_run_as_permanent_naming_it(tmp_path: Path) -> None:
    with calculator_servers(tmp_path, [{}]) as servers:
        config = env_run({"urls": [servers[0].url], "reset": {"task": "12x"}})
        process = launch(config, tmp_path / "run", 3)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == ExitCode.CONFIG, stderr[-2000:]
    assert "12x" in stderr and servers[0].url in stderr


def test_an_in_process_environment_resumes_bit_for_bit(tmp_path: Path, calc_sft: Path) -> None:
    """Straight to step 4, against to step 2 then resumed (a new session, as a new process would build)."""
    config = env_run({"module": "calculator_env:make_env"}, calc_sft, max_steps=4, trajectories={"save": True})
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"

    def contract(root: Path, **fields: Any) -> Contract:
        return Contract.local(root / "checkpoints", init_from=str(calc_sft), rollout_trajectory_root=root / "rollouts",
                              **fields)

    assert run_grpo(config, contract(straight)) == ExitCode.OK
    assert run_grpo(config, contract(interrupted, max_steps=2)) == ExitCode.OK
    assert not (interrupted / "checkpoints" / "step_00000004").exists()
    resume = interrupted / "checkpoints" / "step_00000002"
    assert run_grpo(config, contract(interrupted, resume_from=resume)) == ExitCode.OK

    for step in ("step_00000002", "step_00000004"):
        a = state_digests(straight / "checkpoints" / step)
        b = state_digests(interrupted / "checkpoints" / step)
        assert a == b, [key for key in a if a[key] != b.get(key)]
    for step in range(1, 5):  # the resumed process played exactly the same episodes
        name = f"rollout_{step:08d}.jsonl"
        assert (straight / "rollouts" / name).read_bytes() == (interrupted / "rollouts" / name).read_bytes()
    assert any(len(e) > 2 for g in trajectories(straight / "rollouts") for e in g["episodes"])  # multi-turn ones
    ends = [last_metrics(root / "checkpoints")["env/episodes"] for root in (straight, interrupted)]
    assert ends == [4 * PER_STEP * G] * 2  # the counters came back with the checkpoint


def success_rate(session: GRPOSession) -> tuple[float, float]:
    episodes = session.play_tasks(HELD_OUT)
    return statistics.fmean((e.reward or 0.0) >= 1 for e in episodes), statistics.fmean(e.turns for e in episodes)


@pytest.mark.slow
def test_grpo_on_the_calculator_raises_the_episode_success_rate(tmp_path: Path, calc_sft: Path) -> None:
    """From the SFT start point, 20 steps (8 tasks × 4 episodes each) against the in-process environment."""
    config = env_run({"module": "calculator_env:make_env"}, calc_sft, max_steps=20,
                     trainer={"prompts_per_step": 8})
    session = GRPOSession(config, Contract.local(tmp_path / "ckpt", init_from=calc_sft))
    try:
        before, turns_before = success_rate(session)
        while session.step < 20:
            session.train_step()
        after, turns_after = success_rate(session)
    finally:
        session.close()
    print(f"episode success on 200 held-out tasks: SFT {before:.1%} ({turns_before:.2f} turns), "
          f"after 20 GRPO steps {after:.1%} ({turns_after:.2f} turns)")
    assert after >= before + 0.10, (before, after)


def test_a_generate_hook_brings_its_own_rollout(tmp_path: Path) -> None:
    """Without an environment: the hook's own turns and rewards are trained; with one: the hook plays
    through the environment client, and the context it adds is not trained."""
    alone = parse_run_config({
        "run_id": "hook", "kind": "grpo", "max_steps": 2,
        "rollout": {"generate": "tests.support.generate_hooks:digits_alone"},
        "trainer": {"prompts_per_step": 2, "num_generations": 4, "max_new_tokens": 6}})
    session = GRPOSession(alone, Contract.local(tmp_path / "alone"))
    try:
        rollout, metrics = session.train_step()  # no rollout worker attached: the trainer plays the hook
    finally:
        session.pool.close()
        session.close()
    assert {group.source for group in rollout.groups} == {"trainer"}
    batch = rollout.batch
    assert batch.action_mask is not None and bool(batch.action_mask.eq(batch.completion_mask).all())
    texts = session.tokenizer.batch_decode(rollout.batch.completion_ids, skip_special_tokens=True)
    assert rollout.scores.per_function["env"] == [sum(c.isdigit() for c in t) / max(1, len(t)) for t in texts]
    assert metrics["rewards/env_mean"] == pytest.approx(statistics.fmean(rollout.scores.per_function["env"]))

    hinted = env_run({"module": "calculator_env:make_env"},
                     rollout={"generate": "tests.support.generate_hooks:one_step_with_a_hint"})
    session = GRPOSession(hinted, Contract.local(tmp_path / "hinted"))
    try:
        rollout, metrics = session.train_step()
    finally:
        session.pool.close()
        session.close()
    context = session.tokenizer.decode(rollout.batch.completion_ids[0][rollout.batch.action_mask[0] == 0])
    assert "hint: " in context and metrics["env/episodes"] == PER_STEP * G


def test_a_worker_runs_an_env_run_to_the_end(tmp_path: Path, cluster) -> None:
    """As users run it: submitted to a commander, trained by a ``relay worker`` against a real server,
    its environment counters on the commander."""
    with calculator_servers(tmp_path, [{}]) as servers:
        config = env_run({"urls": [servers[0].url]}, max_steps=2, store=str(cluster.store))
        cluster.client.submit(config.model_dump(mode="json"))
        cluster.worker("w1")
        run = cluster.wait_status("calc-grpo", ("succeeded", "failed"), timeout_s=180)
    assert run.status == "succeeded", cluster.logs()
    episodes = cluster.client.metrics("calc-grpo", "env/episodes").items
    assert [(p.step, p.value) for p in episodes] == [(1, PER_STEP * G), (2, 2 * PER_STEP * G)]


def test_with_data_each_group_starts_from_its_records_prompt_and_reset_fields(tmp_path: Path) -> None:
    data = tmp_path / "tasks.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Add {i}: ", "answer": str(12 + i), "reset": {"task": f"12+{i}"}})
                            + "\n" for i in range(5)))
    config = env_run({"module": "calculator_env:make_env"}, data={"path": str(data)},
                     trainer={"prompts_per_step": 5, "num_generations": 2})
    session = GRPOSession(config, Contract.local(tmp_path / "ckpt"))
    try:
        rollout = session.rollout()
    finally:
        session.close()
    tokenizer = session.tokenizer
    for p, task in enumerate(rollout.tasks):  # the record's index is the seed, its reset column the rest
        i = int(task["task"].split("+")[1])
        assert task == {"seed": i, "task": f"12+{i}"}
        prompt = tokenizer.decode(rollout.batch.prompt_ids[p * 2], skip_special_tokens=True)
        context = tokenizer.decode(rollout.batch.completion_ids[p * 2][rollout.batch.action_mask[p * 2] == 0])
        assert prompt == f"Add {i}: " and context.startswith(f"12+{i}=")


def test_a_rollout_worker_plays_the_episodes_the_trainer_would(tmp_path: Path, calc_sft: Path) -> None:
    """``rollout:`` on an env run: a rollout worker opens its own environments and plays leased groups with
    the published weights; what it posts is what the trainer would have played (same keys, same weights,
    an in-process environment), and the trainer trains it, environment tokens out of the loss."""
    import threading

    from relaytrain.rollout.engine import TorchEngine
    from relaytrain.rollout.worker import RolloutWorker, RolloutWorkerSettings
    from tests.support.commander import wait_until

    config = env_run({"module": "calculator_env:make_env"}, calc_sft, max_steps=6,
                     rollout={"max_staleness": 4, "lease_s": 60})
    session = GRPOSession(config, Contract.local(tmp_path / "ckpt", init_from=calc_sft))
    manager = session.pool.manager

    class Directory:
        def runs(self) -> list[Any]:
            return []

        def endpoint(self, run_id: str) -> Any:
            return type("Endpoint", (), {"url": manager.url, "secret": manager.secret})()

        def register(self, worker_id: str, labels: dict[str, str], run_id: str | None) -> None:
            pass

    settings = RolloutWorkerSettings(worker_id="rw-env", run_id="calc-grpo", max_groups=2, poll_s=0.05,
                                     backoff_max_s=0.2, register_every_s=0.5)
    worker = RolloutWorker(settings, Directory(), engine_factory=lambda: TorchEngine(threads=1, device="cpu"))
    thread = threading.Thread(target=worker.run, daemon=True)
    try:
        session.pool.start()
        thread.start()
        wait_until(lambda: "rw-env" in manager.workers, 60, "the rollout worker registers")
        session.pool.publish(force=True)
        wait_until(lambda: manager.book.counts()["ready"] >= 2, 120, "groups played by the rollout worker")
        ready, _ = manager.book.take_ready(2, version=0)
        for group in ready:
            assert group.source == "rw-env" and group.version == 0 and group.action_mask is not None
            (mine,) = session.generate_groups([group.group_id])  # the trainer's own play of the same group
            assert group.token_ids == mine.token_ids and group.action_mask == mine.action_mask
            assert group.rewards == mine.rewards and group.per_function["env"] == mine.per_function["env"]
        manager.book.load_state_dict(manager.book.state_dict() | {"ready": [
            {**g.__dict__} for g in ready]})  # back on the shelf, to be trained
        sources = []
        while session.step < 3:
            rollout, metrics = session.train_step()
            sources += [g.source for g in rollout.groups]
            assert rollout.batch.action_mask is not None and metrics["loss_tokens"] > 0
    finally:
        worker.stop()
        thread.join(timeout=60)
        session.pool.close()
        session.close()
    assert "rw-env" in sources and multi_turn(rollout)


def multi_turn(rollout: Any) -> bool:
    """Some episode of the rollout has more than one policy turn (an observation between two actions)."""
    mask = rollout.batch.action_mask.tolist()
    return any(sum(1 for a, b in zip(row, row[1:], strict=False) if a == 0 and b == 1) >= 2 for row in mask)
