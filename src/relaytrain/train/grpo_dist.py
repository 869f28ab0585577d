"""GRPO on several ranks (``trainer.distributed.strategy: ddp``): the step's prompts split among the
ranks, each rank's groups gathered into the global batch, the loss of the one-process trainer.

One step on N ranks: every rank's data cursor hands out the same ``prompts_per_step`` positions;
rank ``r`` samples and scores the groups at positions ``r::N`` with its replica of the policy
(sampling is seeded per completion, so a completion is the same whichever rank samples it); the
groups are all-gathered (``gather_rollout``) and laid out as one batch, as the one-process trainer
has it. Each rank then computes the loss on its own groups' rows only, normalised by the **global**
normaliser of ``loss_type`` (``local_loss``), and the gradients are summed across the ranks
(``sum_gradients``: one all-reduce over a flat buffer), so the step's gradient is the one-process
gradient whatever N is. Summing the gradients ourselves, rather than through a DDP wrapper, lets a
rank whose groups have nothing to learn from (zero advantages) skip its forward pass: DDP would
wait for its backward.

Not supported yet (``ConfigError`` at start, naming the field): FSDP (generation with a sharded
policy needs every rank to make the same forward calls), a rollout pool (``rollout:``) and
environments (``env:``).

Public API: ``check_grpo_distributed``, ``gather_rollout``, ``own_rows``, ``local_loss``, ``sum_gradients``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from relaytrain.errors import ConfigError


def check_grpo_distributed(dist: Any, config: Any) -> None:
    """``ConfigError`` naming the field for what GRPO cannot do on several ranks yet."""
    if not dist.enabled:
        return
    if dist.strategy != "ddp":
        raise ConfigError(f"trainer.distributed.strategy: {dist.strategy!r} is not supported for GRPO yet; "
                          "use 'ddp'")
    if config.rollout is not None:
        raise ConfigError("rollout: not supported with trainer.distributed yet (a rollout pool feeds one trainer "
                          "process); drop rollout: or trainer.distributed")
    if config.env is not None:
        raise ConfigError("env: not supported with trainer.distributed yet; drop env: or trainer.distributed")
    dist.check_divisible(config.trainer.prompts_per_step, "trainer.prompts_per_step")


def gather_rollout(session: Any, positions: list[int]) -> tuple[Any, Any]:
    """The step's ``(SampledBatch, RewardScores)`` over all ``positions``, sampled and scored in
    shares: this rank's are ``positions[rank::N]``; every rank returns the whole batch."""
    import torch.distributed as dist

    from relaytrain.train.grpo_pool import groups_to_batch
    from relaytrain.train.rewards import RewardScores

    mine = session.generate_groups(session.dist.shard(positions))
    shares: list[Any] = [None] * session.dist.world_size
    dist.all_gather_object(shares, mine)
    by_position = {group.group_id: group for share in shares for group in share}
    groups = [by_position[p] for p in positions]
    prompts = [session.prompt_ids[session.cursor.index_at(p)] for p in positions]
    batch = groups_to_batch(groups, prompts, session.config.trainer.num_generations, session.pad_id)
    names = list(groups[0].per_function)
    scores = RewardScores(per_function={n: [v for g in groups for v in g.per_function[n]] for n in names},
                          total=[r for g in groups for r in g.rewards])
    return batch, scores


def own_rows(session: Any, rollout: Any, active: Any) -> Any:
    """The rows this rank trains: its groups' completions (groups ``rank::N``), among ``active``
    (``GRPOSession.active_rows``; None: all)."""
    import torch

    g = session.config.trainer.num_generations
    dist = session.dist
    groups = torch.arange(rollout.batch.completion_ids.shape[0]) // g
    mine = groups % dist.world_size == dist.rank
    if active is not None:
        keep = torch.zeros_like(mine)
        keep[active] = True
        mine &= keep
    return torch.nonzero(mine).squeeze(1)


def _normaliser(mask: Any, loss_type: str) -> float:
    """What ``grpo_loss.aggregate`` divides by for ``mask`` (``dr_grpo``'s is a constant: 1)."""
    if loss_type == "dapo":
        return float(mask.sum().clamp(min=1.0))
    if loss_type == "grpo":
        return float((mask.sum(dim=1) > 0).sum().clamp(min=1))
    return 1.0


def local_loss(session: Any, rollout: Any, logps: Any, old_logps: Any, ref_logps: Any = None) -> tuple[Any, Any]:
    """``(loss to backward, LossOutput of the whole step)``: the loss of this rank's groups with the
    global normaliser (summed over the ranks: the one-process loss), and the step's loss and
    clip/KL fractions all-reduced for the report."""
    import torch

    dist = session.dist
    g = session.config.trainer.num_generations
    loss_type = session.config.trainer.loss_type
    mask = rollout.mask
    groups = torch.arange(mask.shape[0]) // g
    local_mask = mask * (groups % dist.world_size == dist.rank).to(mask.dtype)[:, None]
    mine = dataclasses.replace(rollout, mask=local_mask)
    out = session.policy_loss(mine, logps, old_logps, ref_logps)
    scale = _normaliser(local_mask, loss_type) / _normaliser(mask, loss_type)
    loss = out.loss * scale
    total, low, high, kl, tokens = dist.all_sum([float(loss.detach()), out.clip_low * out.tokens,
                                                 out.clip_high * out.tokens, out.kl * out.tokens, out.tokens])
    per_token = max(tokens, 1.0)
    report = dataclasses.replace(out, loss=torch.tensor(total), clip_low=low / per_token, clip_high=high / per_token,
                                 kl=kl / per_token, tokens=int(tokens))
    return loss, report


def sum_gradients(dist: Any, params: list[Any]) -> None:
    """Sum the gradients of ``params`` over the ranks, in place (a parameter without one counts 0)."""
    import torch
    import torch.distributed as tdist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([grad.reshape(-1) for grad in grads])
    tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
    offset = 0
    for param, grad in zip(params, grads, strict=True):
        n = grad.numel()
        param.grad = flat[offset : offset + n].view_as(param).clone()
        offset += n
