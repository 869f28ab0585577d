"""Greedy exact-match evaluation: does the model's greedy completion equal the answer?

Usage::

    from relaytrain.train.data import builtin_dataset
    from relaytrain.train.exact_match import evaluate_exact_match
    result = evaluate_exact_match(model, tokenizer, builtin_dataset("arithmetic", "test"), 4)
    print(result.accuracy)

Public API: ``ExactMatchResult``, ``greedy_complete(model, tokenizer, prompts, …)``,
``evaluate_exact_match(model, tokenizer, records, max_new_tokens, …)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from relaytrain.train.data import Example
from relaytrain.train.templates import Sample, extract_answer, render


@dataclass(frozen=True)
class ExactMatchResult:
    """The share of records answered exactly, and every completion (in record order)."""

    accuracy: float
    correct: int
    total: int
    completions: list[str] = field(default_factory=list)


def greedy_complete(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    *,
    batch_size: int = 64,
    add_special_tokens: bool = True,
) -> list[str]:
    """Greedy completions of ``prompts`` (left-padded batches of ``batch_size``), special tokens removed.

    Plain greedy decoding whatever the model's own ``generation_config`` says (released models
    ship sampling settings and a repetition penalty; none applies here). In float32 a prompt's
    completion is the same in any batch. The model is put in eval mode for the call and
    returned to its previous mode.
    """
    import torch
    from transformers import GenerationConfig

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    greedy = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                              bos_token_id=tokenizer.bos_token_id)

    # generate() fills what a passed config leaves unset from the model's own: swap it for the call.
    owner = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a peft wrapper
    shipped = getattr(owner, "generation_config", None)
    owner.generation_config = greedy
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    completions: list[str] = []
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                batch = tokenizer(
                    list(prompts[start : start + batch_size]),
                    padding=True,
                    return_tensors="pt",
                    add_special_tokens=add_special_tokens,
                ).to(device)
                output = model.generate(**batch, generation_config=greedy)
                new_tokens = output[:, batch["input_ids"].shape[1] :]
                completions.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        model.train(was_training)
        owner.generation_config = shipped
    return completions


def evaluate_exact_match(
    model: Any,
    tokenizer: Any,
    records: Sequence[Sample | Example],
    max_new_tokens: int = 8,
    *,
    template: str = "generic",
    batch_size: int = 64,
) -> ExactMatchResult:
    """Greedy exact match of ``records`` (rendered ``Sample``s, or ``Example``s rendered with ``template``).

    A completion counts when its answer part (inside ``<answer>`` tags for r1, else the whole
    text), stripped, equals the record's answer, stripped.
    """
    samples = [r if isinstance(r, Sample) else render(r, template, tokenizer) for r in records]
    if not samples:
        return ExactMatchResult(0.0, 0, 0, [])
    completions: list[str] = [""] * len(samples)
    for flag in (True, False):  # chat-rendered prompts already hold their special tokens
        chosen = [i for i, s in enumerate(samples) if s.add_special_tokens is flag]
        if not chosen:
            continue
        outputs = greedy_complete(
            model,
            tokenizer,
            [samples[i].prompt for i in chosen],
            max_new_tokens,
            batch_size=batch_size,
            add_special_tokens=flag,
        )
        for i, text in zip(chosen, outputs, strict=True):
            completions[i] = text
    correct = sum(
        extract_answer(text, template) == sample.answer.strip()
        for text, sample in zip(completions, samples, strict=True)
    )
    return ExactMatchResult(correct / len(samples), correct, len(samples), completions)
