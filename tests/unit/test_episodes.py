"""Multi-turn episodes (``relaytrain.train.episodes``): the loss mask of a hand-built episode, the
environment's reward, observation rendering, and the batcher that makes in-process episodes exact."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

torch = pytest.importorskip("torch")

from relaytrain.envs import EpisodeFailed, FailureKind, StepResult  # noqa: E402
from relaytrain.train.episodes import (  # noqa: E402
    Episode,
    Turn,
    _Batcher,
    episode_reward,
    episodes_to_batch,
    render_observation,
    turn_key,
)
from relaytrain.train.grpo_loss import group_advantages, grpo_loss, loss_mask, rewards_tensor  # noqa: E402

PAD = 0


def hand_built() -> list[list[Episode]]:
    """One group of two episodes: observation, action, observation, action (EOS = 2)."""
    first = Episode()
    first.add([10, 11], policy=False)  # the reset's observation
    first.add([20, 21, 2], policy=True, logps=[-0.5, -0.25, -0.125])
    first.add([12], policy=False)  # the tool's answer
    first.add([22, 2], policy=True, logps=[-1.0, -0.5])
    first.reward, first.done, first.turns = 1.0, True, 2
    second = Episode()
    second.add([10, 11], policy=False)
    second.add([23, 2], policy=True, logps=[-2.0, -1.0])
    second.reward, second.done, second.turns = 0.0, True, 1
    return [[first, second]]


def test_only_the_policys_tokens_are_in_the_loss() -> None:
    batch = episodes_to_batch([[1, 5]], hand_built(), 2, PAD)
    assert batch.completion_ids.tolist() == [[10, 11, 20, 21, 2, 12, 22, 2], [10, 11, 23, 2, 0, 0, 0, 0]]
    # attention: every real token of the episode; loss: the policy's only
    assert batch.completion_mask.tolist() == [[1] * 8, [1, 1, 1, 1, 0, 0, 0, 0]]
    assert batch.policy_mask.tolist() == [[0, 0, 1, 1, 1, 0, 1, 1], [0, 0, 1, 1, 0, 0, 0, 0]]
    assert batch.sampling_logps.tolist() == [[0, 0, -0.5, -0.25, -0.125, 0, -1.0, -0.5], [0, 0, -2.0, -1.0, 0, 0, 0, 0]]
    assert batch.truncated.tolist() == [False, False]

    advantages = group_advantages(rewards_tensor([1.0, 0.0]), 2)
    mask = loss_mask(batch.policy_mask, advantages.valid)
    logps = torch.zeros(mask.shape, requires_grad=True)
    out = grpo_loss(logps, logps.detach(), advantages.advantages, mask)
    out.loss.backward()
    trained = (logps.grad != 0).int().tolist()
    assert trained == batch.policy_mask.tolist()  # a gradient on exactly the policy's tokens
    assert out.tokens == 7


def test_an_episode_cut_by_max_turns_is_truncated() -> None:
    episode = Episode()
    episode.add([10], policy=False)
    episode.add([20], policy=True, logps=[-0.1])
    episode.turns, episode.done = 1, False
    batch = episodes_to_batch([[1], [1]], [[episode, episode], [episode, episode]], 2, PAD)
    assert batch.truncated.tolist() == [True] * 4


@pytest.mark.parametrize(("rewards", "mode", "expected"), [
    ([0.0, None, 1.0], "sum", 1.0),
    ([0.5, 0.25], "sum", 0.75),
    ([None, None], "sum", None),
    ([0.5, 0.25], "final", 0.25),
    ([1.0, None], "final", None),
    ([], "final", None),
])
def test_the_episodes_reward(rewards, mode, expected) -> None:
    assert episode_reward(rewards, mode) == expected


def test_observations_render_with_the_template_or_plainly() -> None:
    result = StepResult(observation={"text": "=579\n", "hint": 3}, reward=None, done=False)
    assert render_observation("{text}", result, "here") == "=579\n"
    assert render_observation("[{hint}] {text}", result, "here") == "[3] =579\n"
    assert render_observation(None, StepResult({"text": "x"}, None, False), "here") == "x"
    assert render_observation(None, result, "here") == '{"hint": 3, "text": "=579\\n"}'
    with pytest.raises(EpisodeFailed) as caught:  # garbage: the field the template needs is missing
        render_observation("{feedback}", result, "http://env:1")
    assert caught.value.kind == FailureKind.MALFORMED and caught.value.where == "http://env:1"
    assert "feedback" in caught.value.message


def test_turn_keys_are_stable_and_distinct() -> None:
    keys = {turn_key(p, k, t) for p in range(20) for k in range(4) for t in range(4)}
    assert len(keys) == 320
    assert turn_key(3, 1, 2) == turn_key(3, 1, 2) and 0 <= turn_key(3, 1, 2) < 2**63


def test_the_batcher_batches_every_live_episode_whatever_the_order() -> None:
    """Episodes that never wait on an environment are batched exactly: every batch is the live
    episodes' turns, so the batches are the same on every run."""
    calls: list[list[int]] = []

    def sample(contexts: list[list[int]], keys: list[int]) -> list[Turn]:
        calls.append(sorted(keys))
        return [Turn(token_ids=[key], logps=[-1.0], finished=True) for key in keys]

    async def main() -> list[list[int]]:
        with ThreadPoolExecutor(1) as executor:
            batcher = _Batcher(sample, executor)

            async def episode(key: int, turns: int) -> list[int]:
                async with batcher.episode():
                    got = []
                    for t in range(turns):
                        turn = await batcher.generate([key], key * 10 + t)
                        got += turn.token_ids
                    return got

            return list(await asyncio.gather(episode(1, 3), episode(2, 1), episode(3, 2)))

    assert asyncio.run(main()) == [[10, 11, 12], [20], [30, 31]]
    assert calls == [[10, 20, 30], [11, 31], [12]]


def test_a_sampler_error_reaches_every_waiting_episode() -> None:
    def sample(contexts: list[list[int]], keys: list[int]) -> list[Turn]:
        raise RuntimeError("out of memory")

    async def main() -> list[BaseException | list[int]]:
        with ThreadPoolExecutor(1) as executor:
            batcher = _Batcher(sample, executor)

            async def episode(key: int) -> Turn:
                async with batcher.episode():
                    return await batcher.generate([key], key)

            return list(await asyncio.gather(episode(1), episode(2), return_exceptions=True))

    results = asyncio.run(main())
    assert [str(r) for r in results] == ["out of memory", "out of memory"]


@pytest.mark.parametrize(("straggler_s", "expected"), [(0.02, [[10, 20], [11, 21]]), (1.0, [[10, 20], [11], [21]])])
def test_a_batch_waits_briefly_for_episodes_still_in_their_environment(straggler_s, expected) -> None:
    """Turns sampled one by one cost nearly as much as a batch: a turn waits for an episode still in its
    environment up to half the last batch's time (here 0.1 s), no longer."""
    import time

    calls: list[list[int]] = []

    def sample(contexts: list[list[int]], keys: list[int]) -> list[Turn]:
        calls.append(sorted(keys))
        time.sleep(0.2)
        return [Turn(token_ids=[key], logps=[-1.0], finished=True) for key in keys]

    async def main() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = _Batcher(sample, executor)

            async def episode(key: int, env_s: float) -> None:
                async with batcher.episode():
                    await batcher.generate([key], key * 10)
                    async with batcher.environment():
                        await asyncio.sleep(env_s)
                    await batcher.generate([key], key * 10 + 1)

            await asyncio.gather(episode(1, 0.0), episode(2, straggler_s))

    asyncio.run(main())
    assert calls == expected
