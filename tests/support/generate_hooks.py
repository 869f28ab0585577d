"""Custom rollout logic for the tests (``rollout: {generate: "tests.support.generate_hooks:…"}``)."""

from __future__ import annotations

from typing import Any

from relaytrain.train.episodes import Episode, PromptGroup, turn_key


async def digits_alone(group: PromptGroup, policy: Any, env: Any) -> list[Episode]:
    """No environment: one turn per completion, rewarded by the share of digits it wrote."""
    episodes = []
    for k in range(group.num_generations):
        turn = await policy.generate(group.prompt_ids, turn_key(group.position, k, 0))
        text = policy.tokenizer.decode(turn.token_ids, skip_special_tokens=True)
        episode = Episode(reward=sum(c.isdigit() for c in text) / max(1, len(text)), done=turn.finished, turns=1)
        episode.add(turn.token_ids, policy=True, logps=turn.logps)
        episodes.append(episode)
    return episodes


async def one_step_with_a_hint(group: PromptGroup, policy: Any, env: Any) -> list[Episode]:
    """With the environment: reset, a fixed hint the policy reads (not trained), one action, its reward."""
    hint = policy.tokenizer("hint: ", add_special_tokens=False)["input_ids"]

    async def play(session: Any, k: int) -> Episode:
        first = await session.reset(**group.task)
        episode = Episode()
        episode.add(policy.tokenizer(first.observation["text"], add_special_tokens=False)["input_ids"] + hint,
                    policy=False)
        turn = await policy.generate(group.prompt_ids + episode.token_ids, turn_key(group.position, k, 0))
        episode.add(turn.token_ids, policy=True, logps=turn.logps)
        result = await session.step(policy.tokenizer.decode(turn.token_ids, skip_special_tokens=True))
        episode.reward, episode.done, episode.turns = result.reward, result.done, 1
        return episode

    import asyncio

    return list(await asyncio.gather(*(
        env.run_episode(lambda session, k=k: play(session, k), task=str(group.task))
        for k in range(group.num_generations))))
