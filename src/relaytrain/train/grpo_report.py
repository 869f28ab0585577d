"""What one GRPO step reports: its ``perf/*`` metrics and its trajectory lines.

Public API: ``step_metrics(...)`` (everything a step reports), ``perf_metrics(rollout, elapsed, device)``,
``reward_labels(names)``, ``write_trajectories(rollout, path)``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relaytrain.checkpoint import atomic_write_text

if TYPE_CHECKING:
    from relaytrain.train.grpo import Rollout


def step_metrics(rollout: Rollout, outputs: list[Any], grad_norms: list[float], generated: int, elapsed: float,
                 *, reward_labels: dict[str, str], lr: float, data_epoch: int, device: Any) -> dict[str, Any]:
    """The metrics of one step: rewards (total and per function, labelled by ``reward_labels``), the
    loss terms averaged over the step's ``outputs`` (one per optimizer iteration), lengths, timings and
    ``perf_metrics``."""
    scores, adv = rollout.scores, rollout.advantages
    metrics: dict[str, Any] = {}
    metrics.update(_mean_std("reward", scores.total))
    for name, values in scores.per_function.items():
        metrics.update(_mean_std(f"rewards/{reward_labels[name]}", values))
    n = len(outputs)
    lengths = rollout.batch.completion_lengths.float()
    metrics.update(
        {
            "loss": sum(float(o.loss.item()) for o in outputs) / n,
            "kl": sum(o.kl for o in outputs) / n,
            "clip_low": sum(o.clip_low for o in outputs) / n,
            "clip_high": sum(o.clip_high for o in outputs) / n,
            "clip_fraction": sum(o.clip_fraction for o in outputs) / n,
            "grad_norm": sum(grad_norms) / n,
            "lr": lr,
            "completion_length": float(lengths.mean()),
            "completion_length_max": float(lengths.max()),
            "truncated_fraction": float(rollout.batch.truncated.float().mean()),
            "zero_variance_groups": adv.num_zero_variance_groups,
            "loss_tokens": outputs[0].tokens,
            "tokens_per_s": generated / max(rollout.seconds, 1e-9),
            "sample_s": rollout.seconds,
            "step_s": elapsed,
            "data_epoch": data_epoch,
        }
    )
    metrics.update(perf_metrics(rollout, elapsed, device))
    return metrics


def reward_labels(names: list[str]) -> dict[str, str]:
    """Short metric labels: the function's name (``pkg.mod:brevity`` -> ``brevity``) unless ambiguous."""
    short = {name: name.rpartition(":")[2] for name in names}
    taken = list(short.values())
    return {name: label if taken.count(label) == 1 else name for name, label in short.items()}


def _mean_std(prefix: str, values: list[float | None]) -> dict[str, float | None]:
    """``{prefix}_mean`` and ``{prefix}_std`` (population) over the values that are not None."""
    present = [v for v in values if v is not None]
    return {
        f"{prefix}_mean": statistics.fmean(present) if present else None,
        f"{prefix}_std": statistics.pstdev(present) if len(present) > 1 else (0.0 if present else None),
    }


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
