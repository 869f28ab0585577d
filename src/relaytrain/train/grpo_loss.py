"""The GRPO objective as pure torch functions: advantages, per-token log-probs, the clipped loss.

Shapes: a batch holds ``N = prompts × num_generations`` completions, grouped consecutively (the
``G`` completions of prompt 0 first). Per-token tensors are ``(N, L)`` with ``L`` the longest
completion; ``mask`` is 1 on the tokens that count in the loss.

The pieces, in the order the trainer calls them::

    rewards = rewards_tensor(scores.total)                      # None -> NaN
    adv = group_advantages(rewards, num_generations, "group")   # (r - group mean) / (group std + 1e-4)
    mask = loss_mask(completion_mask, adv.valid, truncated=..., mask_truncated=False)
    logps = token_logps(logits, completion_ids, temperature)
    out = grpo_loss(logps, old_logps, adv.advantages, mask, epsilon=0.2, loss_type="dapo")
    out.loss.backward()

Conventions follow the GRPO, DAPO and Dr. GRPO papers (and TRL's GRPOTrainer): standard deviations
are unbiased (Bessel-corrected), the KL penalty is the k3 estimator
``exp(ref - logp) - (ref - logp) - 1``, and ``epsilon_high`` defaults to ``epsilon``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

ScaleRewards = Literal["group", "batch", "none"]
LossType = Literal["dapo", "grpo", "dr_grpo"]
ADVANTAGE_EPS = 1e-4
"""Added to the standard deviation before dividing, so a near-constant group does not explode."""


def rewards_tensor(total: Sequence[float | None]) -> Tensor:
    """The per-completion rewards as a float32 tensor, NaN where a reward is None."""
    return torch.tensor([float("nan") if r is None else float(r) for r in total], dtype=torch.float32)


@dataclass(frozen=True)
class Advantages:
    """Group-relative advantages of one batch, with what the statistics left out."""

    advantages: Tensor
    """(N,) float: 0 for a None reward and for every completion of a zero-variance group."""
    valid: Tensor
    """(N,) bool: the completion has a reward (it was not None for every function)."""
    zero_variance: Tensor
    """(N,) bool: the completion's group has fewer than two rewards or all of them equal."""
    group_mean: Tensor
    """(N,) float: the mean reward of the completion's group (over its non-None rewards)."""
    group_std: Tensor
    """(N,) float: the unbiased standard deviation within the group (0 with < 2 rewards)."""

    num_generations: int
    """Completions per prompt (the group size)."""

    @property
    def num_zero_variance_groups(self) -> int:
        """How many groups carry no learning signal."""
        return int(self.zero_variance.view(-1, self.num_generations)[:, 0].sum().item())


def group_advantages(
    rewards: Tensor, num_generations: int, scale_rewards: ScaleRewards = "group", eps: float = ADVANTAGE_EPS
) -> Advantages:
    """Advantages ``r - mean(group)``, divided by the group's std (``group``), the batch's std
    (``batch``) or nothing (``none``, Dr. GRPO). NaN rewards (None) are left out of every mean and std
    and get advantage 0; a group with fewer than two rewards, or all rewards equal, is zero-variance
    and gets advantage 0 throughout.
    """
    if rewards.dim() != 1 or rewards.numel() % num_generations:
        raise ValueError(
            f"rewards must be 1-D with a multiple of {num_generations} elements, got {tuple(rewards.shape)}"
        )
    if scale_rewards not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards must be group, batch or none, got {scale_rewards!r}")
    rewards = rewards.to(torch.float32)
    grouped = rewards.view(-1, num_generations)
    valid = ~torch.isnan(grouped)
    count = valid.sum(dim=1)
    filled = torch.where(valid, grouped, torch.zeros_like(grouped))
    mean = filled.sum(dim=1) / count.clamp(min=1)
    deviation = torch.where(valid, grouped - mean[:, None], torch.zeros_like(grouped))
    std = ((deviation**2).sum(dim=1) / (count - 1).clamp(min=1)).sqrt()
    zero = (count < 2) | torch.isclose(std, torch.zeros_like(std))
    if scale_rewards == "group":
        advantages = deviation / (std[:, None] + eps)
    elif scale_rewards == "batch":
        flat = rewards[~torch.isnan(rewards)]
        batch_std = flat.std() if flat.numel() > 1 else torch.zeros(())
        advantages = deviation / (batch_std + eps)
    else:
        advantages = deviation
    keep = valid & ~zero[:, None]
    advantages = torch.where(keep, advantages, torch.zeros_like(advantages))
    return Advantages(
        advantages=advantages.reshape(-1),
        valid=valid.reshape(-1),
        zero_variance=zero.repeat_interleave(num_generations),
        group_mean=mean.repeat_interleave(num_generations),
        group_std=std.repeat_interleave(num_generations),
        num_generations=num_generations,
    )


def loss_mask(
    completion_mask: Tensor,
    valid: Tensor,
    *,
    truncated: Tensor | None = None,
    mask_truncated: bool = False,
    skip: Tensor | None = None,
) -> Tensor:
    """The float (N, L) mask of tokens that count in the loss.

    Starts from ``completion_mask`` (the generated tokens, EOS included, padding excluded) and removes
    whole completions: those without a reward (``~valid``), the truncated ones when
    ``mask_truncated`` (DAPO's overlong filtering), and any flagged in ``skip`` (for example the
    completions of zero-variance groups).
    """
    keep = valid.clone().bool()
    if mask_truncated:
        if truncated is None:
            raise ValueError("mask_truncated needs the truncated flags")
        keep &= ~truncated.bool()
    if skip is not None:
        keep &= ~skip.bool()
    return completion_mask.to(torch.float32) * keep[:, None].to(torch.float32)


def token_logps(logits: Tensor, token_ids: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-probabilities (N, L) of ``token_ids`` (N, L) under ``logits`` (N, L, V) ÷ temperature.

    ``logits[:, t]`` must be the prediction of ``token_ids[:, t]`` (already shifted by the caller).
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    logps = torch.log_softmax(logits, dim=-1)
    return logps.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)


@dataclass(frozen=True)
class LossOutput:
    """The scalar loss (with grad) and its diagnostics as plain floats."""

    loss: Tensor
    clip_low: float
    """Fraction of loss tokens whose ratio fell below 1 - epsilon with a negative advantage."""
    clip_high: float
    """Fraction of loss tokens whose ratio rose above 1 + epsilon_high with a positive advantage."""
    kl: float
    """Mean k3 KL to the reference over loss tokens (0 without a reference)."""
    tokens: int
    """Loss tokens in the batch."""

    @property
    def clip_fraction(self) -> float:
        """Fraction of loss tokens clipped on either side."""
        return self.clip_low + self.clip_high


def kl_k3(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(policy ‖ reference), per token: ``e^d - d - 1``, ``d = ref - logp``."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


def aggregate(per_token: Tensor, mask: Tensor, loss_type: LossType, max_completion_length: int | None = None) -> Tensor:
    """Reduce a per-token loss (N, L) to a scalar.

    ``dapo``: sum over loss tokens ÷ loss tokens in the whole batch. ``grpo``: mean over each
    completion's loss tokens, then mean over the completions that have any. ``dr_grpo``: sum over
    loss tokens ÷ (N × max_completion_length), a constant. An empty mask gives a zero loss that still
    carries grad.
    """
    masked = per_token * mask
    if loss_type == "dapo":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if loss_type == "grpo":
        lengths = mask.sum(dim=1)
        has_tokens = lengths > 0
        per_sequence = masked.sum(dim=1) / lengths.clamp(min=1.0)
        return (per_sequence * has_tokens).sum() / has_tokens.sum().clamp(min=1)
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("dr_grpo needs max_completion_length")
        return masked.sum() / (per_token.shape[0] * max_completion_length)
    raise ValueError(f"loss_type must be dapo, grpo or dr_grpo, got {loss_type!r}")


def behaviour_weights(old_logps: Tensor, behaviour_logps: Tensor, on_policy: Tensor, cap: float) -> Tensor:
    """Truncated importance weights ``min(exp(old - behaviour), cap)`` per token (N, L), no grad.

    Decoupled PPO (Hilton et al. 2022; AReaL): the policy ratio is taken against ``old_logps``, the
    trainer's weights before this batch's update (the proximal policy), and each token is weighted by
    how much more likely the proximal policy finds it than the policy that sampled it
    (``behaviour_logps``, carried with each completion). Truncating the weight at ``cap`` bounds the
    variance, as in truncated importance sampling. Rows flagged ``on_policy`` (sampled by these very
    weights) get exactly 1: the two log-probs differ there only by rounding.
    """
    weights = torch.exp(old_logps.detach() - behaviour_logps.to(old_logps.dtype)).clamp(max=cap)
    return torch.where(on_policy.to(torch.bool)[:, None], torch.ones_like(weights), weights)


def grpo_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    ref_logps: Tensor | None = None,
    loss_type: LossType = "dapo",
    max_completion_length: int | None = None,
    importance_weights: Tensor | None = None,
) -> LossOutput:
    """The clipped surrogate ``-min(ρA, clip(ρ, 1-ε, 1+ε_high)A) + β·KL`` aggregated by ``loss_type``.

    ``logps`` (N, L) carries grad; ``old_logps`` (N, L) are the log-probs of the policy that sampled
    (detached ``logps`` when training once per batch); ``advantages`` is (N,); ``ref_logps`` is needed
    only when ``beta > 0``.

    ``importance_weights`` (N, L), for completions sampled by another policy than ``old_logps``'s (a
    rollout worker holding older weights): the clipped surrogate of each token is multiplied by its
    weight (decoupled PPO; see ``behaviour_weights``). None: every weight is 1 (on-policy).
    """
    if beta > 0 and ref_logps is None:
        raise ValueError("beta > 0 needs ref_logps")
    eps_high = epsilon if epsilon_high is None else epsilon_high
    mask = mask.to(logps.dtype)
    adv = advantages.to(logps.dtype)[:, None]
    ratio = torch.exp(logps - old_logps.detach())
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    if importance_weights is not None:
        per_token = per_token * importance_weights.detach().to(per_token.dtype)
    kl_mean = 0.0
    tokens = mask.sum().clamp(min=1.0)
    if beta > 0:
        assert ref_logps is not None
        kl = kl_k3(logps, ref_logps.detach())
        per_token = per_token + beta * kl
        kl_mean = float(((kl * mask).sum() / tokens).item())
    loss = aggregate(per_token, mask, loss_type, max_completion_length)
    with torch.no_grad():
        low = ((ratio < 1 - epsilon) & (adv < 0)).to(mask.dtype)
        high = ((ratio > 1 + eps_high) & (adv > 0)).to(mask.dtype)
        clip_low = float(((low * mask).sum() / tokens).item())
        clip_high = float(((high * mask).sum() / tokens).item())
    return LossOutput(loss=loss, clip_low=clip_low, clip_high=clip_high, kl=kl_mean, tokens=int(mask.sum().item()))
