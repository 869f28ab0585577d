"""Sampling: per-completion seeds make completions independent of batch composition and order."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from relaytrain.train.grpo_loss import token_logps  # noqa: E402
from relaytrain.train.sampling import (  # noqa: E402
    SampledBatch,
    draw_tokens,
    position_ids_from_mask,
    sample_completions,
    sample_seed,
    sample_uniforms,
)

PROMPTS = ["12+7=", "3+45=", "99+99=", "rev abc="]


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    from relaytrain.train.tiny import load_model_and_tokenizer

    return load_model_and_tokenizer("tiny", seed=0)


def _sample(tiny: tuple[Any, Any], indices: list[int], **overrides: Any) -> SampledBatch:
    model, tok = tiny
    kwargs: dict[str, Any] = dict(
        num_generations=3, seed=7, step=5, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        max_new_tokens=6, temperature=1.0, top_p=1.0,
    )  # fmt: skip
    kwargs.update(overrides)
    ids = [tok(PROMPTS[i])["input_ids"] for i in indices]
    return sample_completions(model, ids, prompt_keys=[100 + i for i in indices], **kwargs)


def _rows(batch: SampledBatch, slot: int) -> tuple[list[list[int]], list[list[float]]]:
    """The completions (unpadded) and their log-probs of prompt ``slot`` in the batch."""
    g = batch.num_generations
    tokens, logps = [], []
    for row in range(slot * g, slot * g + g):
        n = int(batch.completion_mask[row].sum())
        tokens.append(batch.completion_ids[row, :n].tolist())
        logps.append(batch.sampling_logps[row, :n].tolist())
    return tokens, logps


def test_seed_is_a_stable_function_of_the_four_coordinates() -> None:
    assert sample_seed(0, 1, 2, 3) == sample_seed(0, 1, 2, 3)
    seeds = {sample_seed(s, t, k, g) for s in range(2) for t in range(3) for k in range(3) for g in range(4)}
    assert len(seeds) == 2 * 3 * 3 * 4
    assert torch.equal(sample_uniforms(0, 1, 2, 3, 5), sample_uniforms(0, 1, 2, 3, 5))
    assert sample_uniforms(0, 1, 2, 3, 8)[:5].equal(sample_uniforms(0, 1, 2, 3, 5))


def test_completions_do_not_depend_on_batch_composition_order_or_size(tiny: tuple[Any, Any]) -> None:
    full = _sample(tiny, [0, 1, 2, 3])
    reordered = _sample(tiny, [3, 1, 0])
    alone = _sample(tiny, [2])
    for slot_full, other, slot_other in (
        (0, reordered, 2),
        (1, reordered, 1),
        (3, reordered, 0),
        (2, alone, 0),
    ):
        tokens_a, logps_a = _rows(full, slot_full)
        tokens_b, logps_b = _rows(other, slot_other)
        assert tokens_a == tokens_b
        for a, b in zip(logps_a, logps_b, strict=True):
            assert a == pytest.approx(b, abs=1e-5)
    # and a different step, seed or prompt key samples differently
    assert _rows(_sample(tiny, [0], step=6), 0)[0] != _rows(full, 0)[0]
    assert _rows(_sample(tiny, [0], seed=8), 0)[0] != _rows(full, 0)[0]


def test_the_same_call_twice_is_bit_identical(tiny: tuple[Any, Any]) -> None:
    a, b = _sample(tiny, [0, 1]), _sample(tiny, [0, 1])
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.sampling_logps, b.sampling_logps)
    model = tiny[0]
    for mode in (True, False):
        model.train(mode)
        _sample(tiny, [0])
        assert model.training is mode  # sampling runs in eval mode and restores the caller's


def test_sampling_logps_match_a_full_forward_at_the_same_temperature(tiny: tuple[Any, Any]) -> None:
    model, _ = tiny
    batch = _sample(tiny, [0, 2, 3], temperature=0.7)
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    mask = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    width = batch.completion_ids.shape[1]
    logits = logits[:, batch.prompt_ids.shape[1] - 1 : -1, :]
    full = token_logps(logits, batch.completion_ids, temperature=0.7) * batch.completion_mask
    assert torch.allclose(full, batch.sampling_logps, atol=1e-4)
    assert width <= 6


def test_draw_tokens_inverse_cdf_with_top_p() -> None:
    # p = [0.2, 0.5, 0.3]; sorted [0.5 (id 1), 0.3 (id 2), 0.2 (id 0)]; top_p 0.6 keeps mass before
    # each token < 0.6: 0.5 and 0.3 (0.8 before id 0 is dropped). u = 0.7: target 0.7 * 0.8 = 0.56,
    # cdf [0.5, 0.8] -> id 2 with probability 0.3 / 0.8; u = 0.1 -> id 1 with 0.5 / 0.8
    logits = torch.tensor([0.2, 0.5, 0.3]).log().expand(2, 3)
    tokens, logps = draw_tokens(logits, torch.tensor([0.7, 0.1], dtype=torch.float64), 1.0, 0.6)
    assert tokens.tolist() == [2, 1]
    assert logps.tolist() == pytest.approx([math.log(0.3 / 0.8), math.log(0.5 / 0.8)], abs=1e-6)
    # without top_p: cdf [0.5, 0.8, 1.0]; u = 0.75 -> id 2, u = 0.95 -> id 0
    tokens, logps = draw_tokens(logits, torch.tensor([0.75, 0.95], dtype=torch.float64), 1.0, 1.0)
    assert tokens.tolist() == [2, 0]
    assert logps.tolist() == pytest.approx([math.log(0.3), math.log(0.2)], abs=1e-6)
    # a tiny top_p is greedy, with log-prob 0
    tokens, logps = draw_tokens(logits, torch.tensor([0.99, 0.0], dtype=torch.float64), 1.0, 1e-6)
    assert tokens.tolist() == [1, 1] and logps.tolist() == [0.0, 0.0]


@dataclass
class _Out:
    logits: Any
    cache: Any


class ScriptedLM(torch.nn.Module):
    """A stand-in causal LM (the sampler is under test, not the model): after token t it puts all
    mass on t + 1, and on EOS after token 5. It checks that the cache carries the whole sequence."""

    vocab, eos = 20, 0

    def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, use_cache: bool, cache: Any = None):
        seen = input_ids if cache is None else torch.cat([cache, input_ids], dim=1)
        assert seen.shape == attention_mask.shape
        last = input_ids[:, -1]
        target = torch.where(last == 5, torch.full_like(last, self.eos), (last + 1) % self.vocab)
        logits = torch.full((input_ids.shape[0], input_ids.shape[1], self.vocab), -1e9)
        logits[:, -1, :].scatter_(1, target[:, None], 0.0)
        return _Out(logits=logits, cache=seen)


@pytest.mark.parametrize("pad", [19, 0])  # a pad distinct from EOS, and pad == EOS
def test_eos_ends_a_completion_and_the_rest_is_padding(pad: int) -> None:
    batch = sample_completions(
        ScriptedLM(), [[1, 3], [10]], prompt_keys=[0, 1], num_generations=2, seed=0, step=0,
        eos_token_id=0, pad_token_id=pad, max_new_tokens=4,
    )  # fmt: skip
    assert batch.prompt_ids.tolist() == [[1, 3], [1, 3], [pad, 10], [pad, 10]]
    assert batch.prompt_mask.tolist() == [[1, 1], [1, 1], [0, 1], [0, 1]]
    assert batch.completion_ids.tolist() == [[4, 5, 0, pad]] * 2 + [[11, 12, 13, 14]] * 2
    assert batch.completion_mask.tolist() == [[1, 1, 1, 0]] * 2 + [[1, 1, 1, 1]] * 2
    assert batch.truncated.tolist() == [False, False, True, True]
    assert batch.completion_lengths.tolist() == [3, 3, 4, 4]
    assert batch.sampling_logps.abs().max().item() == 0.0  # every token had probability 1


def test_stops_early_when_every_completion_ended() -> None:
    batch = sample_completions(
        ScriptedLM(), [[4]], prompt_keys=[0], num_generations=2, seed=0, step=0,
        eos_token_id=0, pad_token_id=19, max_new_tokens=8,
    )  # fmt: skip
    assert batch.completion_ids.tolist() == [[5, 0], [5, 0]]
    assert not batch.truncated.any()


def test_all_done_keeps_decoding_until_every_rank_is_done_and_changes_no_completion() -> None:
    """A sharded policy's sampler: the loop asks ``all_done`` after each token (here: the other
    rank finishes 3 tokens later) and goes on, this process's ended rows drawing padding."""
    asked: list[bool] = []

    def all_done(finished: bool) -> bool:
        asked.append(finished)
        return finished and len(asked) >= 5

    kwargs: dict[str, Any] = dict(prompt_keys=[0], num_generations=2, seed=0, step=0, eos_token_id=0,
                                  pad_token_id=19, max_new_tokens=8)
    alone = sample_completions(ScriptedLM(), [[4]], **kwargs)
    synced = sample_completions(ScriptedLM(), [[4]], all_done=all_done, **kwargs)
    assert asked == [False, True, True, True, True]  # 5 tokens drawn where one process draws 2
    assert synced.completion_ids.tolist() == [[5, 0, 19, 19, 19]] * 2
    assert synced.completion_mask[:, :2].tolist() == alone.completion_mask.tolist()
    assert synced.completion_lengths.tolist() == alone.completion_lengths.tolist() == [2, 2]
    assert synced.sampling_logps[:, 2:].abs().max().item() == 0.0 and not synced.truncated.any()


def test_bad_arguments_are_refused(tiny: tuple[Any, Any]) -> None:
    with pytest.raises(ValueError, match="prompt keys"):
        sample_completions(tiny[0], [[1, 2]], prompt_keys=[], num_generations=2, seed=0, step=0,
                           eos_token_id=2, pad_token_id=0, max_new_tokens=2)  # fmt: skip
    with pytest.raises(ValueError, match="at least one token"):
        sample_completions(tiny[0], [[]], prompt_keys=[0], num_generations=2, seed=0, step=0,
                           eos_token_id=2, pad_token_id=0, max_new_tokens=2)  # fmt: skip
