"""GRPO on several ranks (``trainer.distributed.strategy: ddp`` or ``fsdp``): the step's prompts split
among the ranks, each rank's groups gathered into the global batch, the loss of the one-process trainer.

One step on N ranks: every rank's data cursor hands out the same ``prompts_per_step`` positions;
rank ``r`` samples and scores the groups at positions ``r::N`` with its policy (sampling is seeded
per completion, so a completion is the same whichever rank samples it); the groups are
all-gathered (``gather_rollout``) and laid out as one batch, as the one-process trainer has it.
Each rank then computes the loss on its own groups' rows only, normalised by the **global**
normaliser of ``loss_type`` (``local_loss``), so the losses of the ranks add up to the
one-process loss, and ``backward`` makes the step's gradient the one-process gradient:

- DDP (the policy replicated, not wrapped): the gradients are summed across the ranks
  (``sum_gradients``: one all-reduce over a flat buffer). Summing them ourselves, rather than
  through a DDP wrapper, lets a rank whose groups have nothing to learn from (zero advantages)
  skip its forward pass: DDP would wait for its backward.
- FSDP (the policy, and the reference model when ``beta > 0``, sharded with ``fully_shard`` as
  SFT shards its model): every forward is a collective, so every rank makes the same forward
  calls. Generation goes on until every rank's completions have ended (``all_done``: an
  all-reduce per token; a rank whose rows are done draws padding); a rank with nothing to learn
  runs its forward and backward on one of its rows, whose loss is exactly 0 (``own_rows``); the
  backward reduce-scatters the gradients as an average, so the loss is multiplied by N. Each
  optimizer step has one forward and backward, so gradients are synchronised on every backward.
  Checkpoints are sharded (``train.sharded``); the reference model is gathered into
  ``reference.safetensors`` (``reference_tensors``), which any world size loads.

Not supported yet (``ConfigError`` at start, naming the field): LoRA on FSDP (as for SFT), a
rollout pool (``rollout:``) and environments (``env:``).

Public API: ``check_grpo_distributed``, ``gather_rollout``, ``all_done``, ``own_rows``, ``local_loss``,
``backward``, ``sum_gradients``, ``reference_tensors``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from relaytrain.errors import ConfigError


def check_grpo_distributed(dist: Any, config: Any) -> None:
    """``ConfigError`` naming the field for what GRPO cannot do on several ranks yet."""
    if not dist.enabled:
        return
    if dist.sharded and config.trainer.lora is not None:
        raise ConfigError("trainer.lora: LoRA is not supported with trainer.distributed.strategy 'fsdp' yet; "
                          "use strategy 'ddp' (the adapter is small) or drop trainer.lora")
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


def all_done(dist: Any) -> Any:
    """The sampler's ``all_done`` on a sharded policy (None otherwise): whether every rank's rows
    have ended, so that every rank makes the same decoding forward calls."""
    if not dist.sharded:
        return None
    return lambda finished: not dist.any_rank(not finished)


def own_rows(session: Any, rollout: Any, active: Any) -> Any:
    """The rows this rank trains: its groups' completions (groups ``rank::N``), among ``active``
    (``GRPOSession.active_rows``; None: all). On FSDP never none: a rank with nothing to learn
    from gets the first row of its first group, whose loss is exactly 0 (its advantage is 0 or no
    token of it is in the mask: ``active_rows``), because every rank must run the forward."""
    import torch

    g = session.config.trainer.num_generations
    dist = session.dist
    groups = torch.arange(rollout.batch.completion_ids.shape[0]) // g
    mine = groups % dist.world_size == dist.rank
    if active is not None:
        keep = torch.zeros_like(mine)
        keep[active] = True
        mine &= keep
    rows = torch.nonzero(mine).squeeze(1)
    if dist.sharded and rows.numel() == 0:
        rows = torch.tensor([dist.rank * g])
    return rows


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


def backward(dist: Any, loss: Any, params: list[Any]) -> None:
    """Back-propagate this rank's ``loss`` (``local_loss``) and leave the step's gradient (the
    one-process gradient) in ``params``: FSDP2 averages the ranks' gradients in its backward, so
    the loss is multiplied by N; DDP ranks sum theirs (``sum_gradients``)."""
    if dist.sharded:
        (loss * dist.loss_scale).backward()
        return
    if loss.requires_grad:
        loss.backward()
    sum_gradients(dist, params)


def reference_tensors(dist: Any, reference: Any) -> dict[str, Any]:
    """The reference model's full weights for ``reference.safetensors`` (tied duplicates left
    out). Sharded: gathered from every rank (a collective call), on rank 0 only (the others get {})."""
    from relaytrain.train.model_io import unique_tensors

    if not dist.sharded:
        return unique_tensors(reference)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(reference, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    names = dict(reference.named_parameters())
    tied = {name for name, _ in reference.named_parameters(remove_duplicate=False)} - names.keys()
    return {name: tensor for name, tensor in full.items() if name not in tied} if dist.is_main else {}


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
