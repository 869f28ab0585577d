"""What one GRPO step reports: its ``perf/*`` metrics and its trajectory lines.

Public API: ``write_trajectories(rollout, path)``, ``perf_metrics(rollout, elapsed, device)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relaytrain.checkpoint import atomic_write_text

if TYPE_CHECKING:
    from relaytrain.train.grpo import Rollout


def perf_metrics(rollout: Rollout, elapsed: float, device: Any) -> dict[str, float]:
    """``perf/*`` and ``actor/entropy`` of one step.

    ``perf/total_num_tokens``: the tokens of the step's batch, prompts and completions (what was
    generated and then read by the policy pass); ``perf/throughput``: those ÷ the step's wall time
    (generation included, wherever it ran); per GPU when the trainer has GPUs. ``actor/entropy``: the
    mean of −log p over the sampled tokens, a Monte-Carlo estimate of the sampling policy's entropy
    per token (no extra forward pass)."""
    import torch

    batch = rollout.batch
    completion = batch.policy_mask.float()  # the sampled tokens (an episode's observations are not)
    tokens = int(batch.prompt_mask.sum()) + int(batch.completion_mask.sum())
    metrics = {
        "perf/total_num_tokens": float(tokens),
        "perf/time_per_step": elapsed,
        "perf/throughput": tokens / max(elapsed, 1e-9),
        "actor/entropy": float((-batch.sampling_logps * completion).sum() / completion.sum().clamp(min=1.0)),
    }
    if device.type == "cuda":
        metrics["perf/throughput_per_gpu"] = metrics["perf/throughput"] / max(1, torch.cuda.device_count())
    return metrics


def _group_fields(rollout: Rollout, p: int) -> dict[str, Any]:
    """With a rollout pool: the group's id (its position in the data order), weight version and source."""
    if rollout.groups is None:
        return {}
    group = rollout.groups[p]
    return {"group_id": group.group_id, "version": group.version, "source": group.source}


def _episode_fields(rollout: Rollout, rows: range, tokenizer: Any) -> dict[str, Any]:
    """Of multi-turn episodes: the task, and each episode's turns in order, ``{"role": "policy" | "env",
    "text": …}`` (the environment's turns are the tokens left out of the loss)."""
    batch = rollout.batch
    if batch.action_mask is None or tokenizer is None:
        return {}
    episodes = []
    for r in rows:
        n = int(batch.completion_mask[r].sum())
        ids, policy = batch.completion_ids[r, :n].tolist(), batch.action_mask[r, :n].tolist()
        turns: list[dict[str, Any]] = []
        start = 0
        for i in range(1, n + 1):
            if i == n or policy[i] != policy[start]:
                turns.append({"role": "policy" if policy[start] else "env",
                              "text": tokenizer.decode(ids[start:i], skip_special_tokens=False)})
                start = i
        episodes.append(turns)
    fields: dict[str, Any] = {"episodes": episodes, "turns": [sum(t["role"] == "policy" for t in e) for e in episodes]}
    if rollout.tasks is not None:
        fields["task"] = rollout.tasks[rows.start // batch.num_generations]
    return fields


def write_trajectories(rollout: Rollout, path: Path, tokenizer: Any = None) -> Path:
    """Write the rollout's trajectory file ``path`` atomically: one JSON line per prompt group (with
    ``tokenizer``, a multi-turn episode's turns too)."""
    g = rollout.batch.num_generations
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for p, (example, sample) in enumerate(zip(rollout.examples, rollout.samples, strict=True)):
        rows = range(p * g, p * g + g)
        lines.append(
            {
                "step": rollout.step,
                "prompt": sample.prompt,
                "answer": example.answer,
                "completions": [rollout.texts[r] for r in rows],
                "rewards": [rollout.scores.total[r] for r in rows],
                "rewards_per_function": {k: [v[r] for r in rows] for k, v in rollout.scores.per_function.items()},
                "advantages": [float(rollout.advantages.advantages[r]) for r in rows],
                "truncated": [bool(rollout.batch.truncated[r]) for r in rows],
                **_group_fields(rollout, p),
                **_episode_fields(rollout, rows, tokenizer),
            }
        )
    atomic_write_text(path, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    return path
