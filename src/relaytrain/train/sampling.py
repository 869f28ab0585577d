"""Sampling G completions per prompt, reproducibly, with a KV-cached loop over a causal LM.

Every completion draws its randomness from its own ``torch.Generator`` seeded by a hash of
``(seed, step, prompt_key, sample_index)``: the uniforms it uses are fixed before the first token,
so a completion is the same whatever other prompts share its batch, in whatever order — and a run
resumed at step N samples exactly what the uninterrupted run sampled at step N. The sampler has no
state of its own beyond ``seed``; the trainer's step counter and data cursor are the rest.

A token is drawn by inverse-CDF sampling over the temperature-scaled, top-p-truncated distribution
(tokens sorted by probability, stable), one uniform per token. Usage::

    batch = sample_completions(model, prompt_ids, prompt_keys=[17, 18], num_generations=4,
                               seed=0, step=3, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                               max_new_tokens=8, temperature=1.0, top_p=1.0)
    batch.completion_ids  # (2 * 4, L) right-padded with pad_token_id, EOS included
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def sample_seed(seed: int, step: int, prompt_key: int, sample_index: int) -> int:
    """A 63-bit generator seed from the four coordinates of one completion (stable across runs)."""
    text = f"relaytrain-sample:{seed}:{step}:{prompt_key}:{sample_index}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & (2**63 - 1)


def sample_uniforms(seed: int, step: int, prompt_key: int, sample_index: int, count: int) -> Tensor:
    """The ``count`` uniforms in [0, 1) that one completion's tokens are drawn with (float64)."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(sample_seed(seed, step, prompt_key, sample_index))
    return torch.rand(count, generator=generator, dtype=torch.float64)


@dataclass(frozen=True)
class SampledBatch:
    """G completions for each of P prompts, grouped: rows ``p*G … p*G+G-1`` belong to prompt ``p``."""

    prompt_ids: Tensor
    """(N, P_max) prompt tokens, left-padded with the pad id."""
    prompt_mask: Tensor
    """(N, P_max) 1 on real prompt tokens."""
    completion_ids: Tensor
    """(N, L) generated tokens, right-padded with the pad id; L ≤ max_new_tokens."""
    completion_mask: Tensor
    """(N, L) 1 on generated tokens up to and including EOS."""
    truncated: Tensor
    """(N,) bool: no EOS within max_new_tokens."""
    sampling_logps: Tensor
    """(N, L) log-probability of each token under the distribution it was drawn from (0 on padding)."""
    num_generations: int
    action_mask: Tensor | None = None
    """(N, L) 1 on the policy's own tokens, for multi-turn episodes whose completions also hold the
    environment's observations (``train.episodes``); None: every completion token is the policy's."""

    @property
    def completion_lengths(self) -> Tensor:
        """(N,) tokens per completion, EOS included (an episode's observations too)."""
        return self.completion_mask.sum(dim=1)

    @property
    def policy_mask(self) -> Tensor:
        """(N, L) 1 on the tokens the policy sampled: the ones a loss may train."""
        return self.completion_mask if self.action_mask is None else self.action_mask


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Stack token lists into (B, T) ids and mask, padded on the left."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("every prompt needs at least one token")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return ids, mask


def position_ids_from_mask(mask: Tensor) -> Tensor:
    """Positions counted from each row's first real token (0 on left padding)."""
    return (mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def draw_tokens(logits: Tensor, uniforms: Tensor, temperature: float, top_p: float) -> tuple[Tensor, Tensor]:
    """Draw one token per row of ``logits`` (B, V) with ``uniforms`` (B,); return ids and log-probs.

    The distribution is softmax(logits / temperature), restricted to the smallest set of most
    probable tokens whose mass reaches ``top_p`` (always at least one token), renormalised.
    """
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    if top_p < 1.0:
        before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = torch.where(before < top_p, sorted_probs, torch.zeros_like(sorted_probs))
    cdf = sorted_probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    index = (cdf < uniforms[:, None] * total).sum(dim=-1, keepdim=True)
    index = index.clamp(max=probs.shape[-1] - 1)
    while True:  # a uniform landing on a zero-probability tail slot moves back to the last real token
        picked = sorted_probs.gather(-1, index)
        if bool((picked > 0).all()):
            break
        index = torch.where(picked > 0, index, index - 1)
    token = order.gather(-1, index).squeeze(-1)
    logp = (picked / total).log().squeeze(-1).float()
    return token, logp


@torch.no_grad()
def sample_completions(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    *,
    prompt_keys: Sequence[int],
    num_generations: int,
    seed: int,
    step: int,
    eos_token_id: int,
    pad_token_id: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    all_done: Callable[[bool], bool] | None = None,
) -> SampledBatch:
    """Generate ``num_generations`` completions for each prompt in one batched, KV-cached loop.

    ``prompt_keys`` identify the prompts for seeding (the trainer passes each prompt's position in
    the data stream); completion ``g`` of prompt ``p`` uses the uniforms of
    ``(seed, step, prompt_keys[p], g)``. The model is put in eval mode for the loop and restored.

    ``all_done`` (a sharded policy, where every rank must make the same forward calls): asked
    after each token whether this process's rows have all ended, it answers whether every
    rank's have (an all-reduce); the loop goes on until then, this process's finished rows
    drawing padding, so the completions are the same as without it (their width may be more).
    """
    if len(prompt_keys) != len(prompt_ids):
        raise ValueError(f"{len(prompt_keys)} prompt keys for {len(prompt_ids)} prompts")
    if temperature <= 0 or not 0 < top_p <= 1:
        raise ValueError("temperature must be > 0 and top_p in (0, 1]")
    prompts, mask = left_pad([list(p) for p in prompt_ids], pad_token_id)
    ids, mask = prompts.repeat_interleave(num_generations, dim=0), mask.repeat_interleave(num_generations, dim=0)
    uniforms = torch.stack(
        [
            sample_uniforms(seed, step, int(key), g, max_new_tokens)
            for key in prompt_keys
            for g in range(num_generations)
        ]
    )
    device = _device_of(model)
    was_training = model.training
    model.eval()
    try:
        tokens, logps, done = _generate(
            model,
            ids.to(device),
            mask.to(device),
            num_generations,
            uniforms.to(device),
            eos_token_id,
            pad_token_id,
            max_new_tokens,
            temperature,
            top_p,
            all_done,
        )
    finally:
        model.train(was_training)
    completion_ids = torch.stack(tokens, dim=1).cpu()
    sampling_logps = torch.stack(logps, dim=1).cpu()
    is_eos = completion_ids == eos_token_id
    after_eos = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    completion_mask = (~after_eos).long()
    completion_ids = torch.where(after_eos, torch.full_like(completion_ids, pad_token_id), completion_ids)
    sampling_logps = sampling_logps * completion_mask
    return SampledBatch(
        prompt_ids=ids,
        prompt_mask=mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        truncated=~done.cpu(),
        sampling_logps=sampling_logps,
        num_generations=num_generations,
    )


def model_cache(out: Any) -> tuple[str, Any]:
    """The keyword a model's forward takes its KV cache by (``cache`` in newer transformers,
    ``past_key_values`` before), and the cache in its output ``out``."""
    name = "cache" if "cache" in getattr(type(out), "__dataclass_fields__", {}) else "past_key_values"
    return name, getattr(out, name, None)


def completion_logits(model: Any, batch: SampledBatch, picked: Tensor, device: Any) -> Tensor:
    """(R, L, V) next-token logits of the completions ``picked`` of ``batch`` under ``model``.

    The completions of one prompt share it: each prompt is read once and its keys and values (with
    their gradient) are handed to every completion of it, as the sampler does. Same numbers as one
    pass over prompt + completion per row, with a third to a half less work; a model whose cache
    cannot be shared gets that one pass per row."""
    logits = _shared_prompt_logits(model, batch, picked, device)
    return _row_logits(model, batch, picked, device) if logits is None else logits


def _row_logits(model: Any, batch: SampledBatch, picked: Tensor, device: Any) -> Tensor:
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)[picked].to(device)
    mask = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)[picked].to(device)
    width = batch.completion_ids.shape[1]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    return logits[:, -width - 1 : -1, :]


def _shared_prompt_logits(model: Any, batch: SampledBatch, picked: Tensor, device: Any) -> Tensor | None:
    groups, of_row = torch.unique(picked // batch.num_generations, return_inverse=True)
    first = groups * batch.num_generations  # a row of each group: they all hold the same prompt
    prompt_ids, prompt_mask = batch.prompt_ids[first].to(device), batch.prompt_mask[first].to(device)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask,
                position_ids=position_ids_from_mask(prompt_mask), use_cache=True)
    cache_name, cache = model_cache(out)
    if not hasattr(cache, "batch_select_indices"):
        return None
    of_row = of_row.to(device)
    cache.batch_select_indices(of_row)  # differentiable: indexing the prompt's keys and values
    head = out.logits[:, -1:, :][of_row]  # predicts each completion's first token
    completion = batch.completion_ids[picked].to(device)
    width = completion.shape[1]
    if width == 1:
        return head
    mask = torch.cat([prompt_mask[of_row], batch.completion_mask[picked].to(device)], dim=1)
    positions = position_ids_from_mask(mask)[:, prompt_mask.shape[1] : -1]
    rest = model(input_ids=completion[:, :-1], attention_mask=mask[:, :-1], position_ids=positions,
                 use_cache=True, **{cache_name: cache}).logits
    return torch.cat([head, rest], dim=1)


def _device_of(model: Any) -> torch.device:
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _generate(
    model: Any,
    ids: Tensor,
    mask: Tensor,
    repeats: int,
    uniforms: Tensor,
    eos_token_id: int,
    pad_token_id: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    all_done: Callable[[bool], bool] | None = None,
) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """The decoding loop: returns per-step tokens and log-probs, and which rows reached EOS.

    Rows come in runs of ``repeats`` copies of one prompt: the prompt is read once (the prefill
    runs on one copy) and its cache is repeated, when the model's cache can be."""
    batch = ids.shape[0]
    done = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    positions = position_ids_from_mask(mask)
    once = slice(None, None, repeats)
    out = model(input_ids=ids[once], attention_mask=mask[once], position_ids=positions[once], use_cache=True)
    cache_name, past = model_cache(out)
    if hasattr(past, "batch_repeat_interleave"):
        past.batch_repeat_interleave(repeats)
        logits = out.logits[:, -1, :].repeat_interleave(repeats, dim=0)
    else:  # a cache that cannot be repeated: read every copy
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        past, logits = getattr(out, cache_name), out.logits[:, -1, :]
    next_position = positions[:, -1:] + 1
    tokens: list[Tensor] = []
    logps: list[Tensor] = []
    for t in range(max_new_tokens):
        token, logp = draw_tokens(logits, uniforms[:, t], temperature, top_p)
        token = torch.where(done, torch.full_like(token, pad_token_id), token)
        tokens.append(token)
        logps.append(torch.where(done, torch.zeros_like(logp), logp))
        done = done | (token == eos_token_id)
        if t == max_new_tokens - 1:
            break
        finished = bool(done.all())
        if all_done(finished) if all_done is not None else finished:
            break
        mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=1)
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=next_position,
            use_cache=True,
            **{cache_name: past},
        )
        past = getattr(out, cache_name)
        logits = out.logits[:, -1, :]
        next_position = next_position + 1
    return tokens, logps, done
