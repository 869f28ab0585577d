"""Prompt templates: turn an ``Example`` into the text the model sees and the text it must write.

Templates (``DataConfig.template``):

- ``generic``: the prompt as written (chat messages become ``role: content`` lines ending in
  ``assistant: ``); the completion is the target as written.
- ``r1`` (alias ``deepseek``): the DeepSeek-R1 instruction; the model must answer as
  ``<think>…</think><answer>…</answer>``. The SFT target is built from the example's
  ``reasoning`` (may be empty) and ``answer``.
- ``chat``: the tokenizer's own chat template (``apply_chat_template`` with a generation
  prompt); the rendered prompt already holds the model's special tokens.

Public API: ``TEMPLATES``, ``Sample``, ``render(example, template, tokenizer)``,
``render_all(examples, template, tokenizer)``, ``extract_answer(text, template)``,
``format_r1_completion(reasoning, answer)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from relaytrain.errors import ConfigError

if TYPE_CHECKING:
    from relaytrain.train.data import Example

TEMPLATES: tuple[str, ...] = ("generic", "r1", "deepseek", "chat")

R1_PROMPT = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant "
    "solves it. The Assistant first thinks about the reasoning process and then gives the "
    "answer. The reasoning process and the answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, i.e., <think>reasoning process here</think>"
    "<answer>answer here</answer>.\nUser: {question}\nAssistant: "
)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclass(frozen=True)
class Sample:
    """One rendered example.

    ``prompt`` is the model's input text, ``completion`` the text it is trained to write
    (without the end-of-sequence token), ``answer`` the ground truth a reward or exact-match
    check compares with, ``add_special_tokens`` whether tokenising ``prompt`` must add the
    tokenizer's special tokens (``False`` when a chat template already put them in).
    """

    prompt: str
    completion: str
    answer: str
    add_special_tokens: bool = True


def format_r1_completion(reasoning: str, answer: str) -> str:
    """The r1 target: ``<think>{reasoning}</think><answer>{answer}</answer>``."""
    return f"<think>{reasoning}</think><answer>{answer}</answer>"


def extract_answer(text: str, template: str) -> str:
    """The answer part of a model's completion: inside ``<answer>`` tags for r1, else the text.

    Surrounding whitespace is stripped; an r1 completion without answer tags gives ``""``.
    """
    if _canonical(template) == "r1":
        match = _ANSWER_RE.search(text)
        return match.group(1).strip() if match else ""
    return text.strip()


def render(example: Example, template: str, tokenizer: Any = None) -> Sample:
    """Render one example with ``template``; ``chat`` needs the tokenizer."""
    name = _canonical(template)
    if name == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ConfigError("data.template: 'chat' needs a tokenizer with a chat template")
        prompt = tokenizer.apply_chat_template(_messages(example), tokenize=False, add_generation_prompt=True)
        return Sample(prompt, example.completion, example.answer, add_special_tokens=False)
    if name == "r1":
        prompt = R1_PROMPT.format(question=_plain_prompt(example, with_generation_prompt=False))
        return Sample(prompt, format_r1_completion(example.reasoning, example.answer), example.answer)
    return Sample(_plain_prompt(example, with_generation_prompt=True), example.completion, example.answer)


def render_all(examples: list[Example], template: str, tokenizer: Any = None) -> list[Sample]:
    """Render every example (see ``render``)."""
    _canonical(template)
    return [render(example, template, tokenizer) for example in examples]


def _canonical(template: str) -> str:
    if template not in TEMPLATES:
        raise ConfigError(f"data.template: unknown template {template!r} (one of: {', '.join(TEMPLATES)})")
    return "r1" if template == "deepseek" else template


def _messages(example: Example) -> list[dict[str, str]]:
    if example.messages is not None:
        return [dict(message) for message in example.messages]
    return [{"role": "user", "content": example.prompt}]


def _plain_prompt(example: Example, *, with_generation_prompt: bool) -> str:
    if example.messages is None:
        return example.prompt
    lines = [f"{m['role']}: {m['content']}" for m in example.messages]
    if not with_generation_prompt:
        return "\n".join(m["content"] for m in example.messages if m["role"] != "system")
    return "\n".join(lines) + "\nassistant: "
