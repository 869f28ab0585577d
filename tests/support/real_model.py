"""A small model of a real architecture (Qwen2), built here with random weights and a locally
trained byte-level BPE tokenizer: the path users take with real models, with no download.

What it copies from a Qwen2.5-Instruct release, because each has broken a trainer somewhere:
no BOS token, ``<|im_end|>`` as EOS and ``<|endoftext|>`` as padding (padding side right, as
shipped), a ChatML chat template, attention biases, tied embeddings, a model vocabulary larger
than the tokenizer's (rounded up to 64, as Qwen's 151936 > 151665), weights saved in bfloat16,
and a ``generation_config.json`` that samples (temperature 0.7, top-p 0.8, top-k 20,
repetition penalty 1.05) and names two EOS ids.

Usage::

    from tests.support.real_model import save_qwen2
    folder = save_qwen2(tmp_path / "qwen2")                 # 2 layers, hidden 64: ~60 k parameters
    folder = save_qwen2(tmp, **QWEN2_05B)                   # Qwen2.5-0.5B's shape (~494 M parameters)

Public API: ``QWEN2_TINY``, ``QWEN2_05B`` (shapes), ``build_bpe_tokenizer()``, ``qwen2_config(tokenizer,
**shape)``, ``save_qwen2(folder, *, seed, dtype, init_std, device, **shape) -> folder``, ``parameter_count(folder)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN2_TINY: dict[str, int] = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "num_key_value_heads": 2}
"""2 layers, hidden 64, 4 heads, 2 KV heads: trains a step in milliseconds on a CPU."""
QWEN2_05B: dict[str, int] = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                             "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936}
"""Qwen2.5-0.5B's shape: 494 M parameters with its 151936-token vocabulary (tied embeddings)."""
_CORPUS_PROMPTS = 3000


def _corpus() -> list[str]:
    from relaytrain.train.data import builtin_dataset
    from relaytrain.train.templates import R1_PROMPT, format_r1_completion

    lines = [f"{e.prompt}{e.completion}" for e in builtin_dataset("arithmetic", "train")[:_CORPUS_PROMPTS]]
    lines += [f"rev {e.prompt}{e.completion}" for e in builtin_dataset("reverse", "train")[:500]]
    lines += [R1_PROMPT.format(question="12+7=") + format_r1_completion("12 plus 7", "19")] * 20
    lines += ["user\n", "assistant\n", "system\n", "user: 12+7=\nassistant: 19"] * 20
    return lines


def build_bpe_tokenizer(vocab_size: int = 600) -> Any:
    """A byte-level BPE tokenizer (``PreTrainedTokenizerFast``) trained here on the built-in
    datasets' text, with Qwen2.5-Instruct's special tokens and conventions (see the module)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT, IM_START, IM_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=IM_END, pad_token=END_OF_TEXT,
                                        padding_side="right", model_max_length=32768)
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def qwen2_config(tokenizer: Any, **shape: int) -> Any:
    """A ``Qwen2Config`` of ``shape`` (default ``QWEN2_TINY``); the vocabulary covers the tokenizer,
    rounded up to a multiple of 64, unless ``vocab_size`` is given."""
    from transformers import Qwen2Config

    shape = {**QWEN2_TINY, **shape}
    vocab = shape.pop("vocab_size", -(-len(tokenizer) // 64) * 64)
    if vocab < len(tokenizer):
        raise ValueError(f"vocab_size {vocab} < the tokenizer's {len(tokenizer)} tokens")
    return Qwen2Config(vocab_size=vocab, max_position_embeddings=2048, rope_theta=1_000_000.0,
                       tie_word_embeddings=True, use_sliding_window=False, rms_norm_eps=1e-6,
                       bos_token_id=tokenizer.convert_tokens_to_ids(END_OF_TEXT),
                       eos_token_id=tokenizer.eos_token_id, **shape)


def save_qwen2(folder: str | Path, *, seed: int = 0, dtype: str = "bfloat16", init_std: float = 0.02,
               device: str = "cpu", **shape: int) -> Path:
    """Build a Qwen2 causal LM of ``shape`` with random weights (``seed``, std ``init_std``: Qwen's 0.02
    makes every greedy completion alike, 0.2 varied ones; drawn on ``device``: ``cuda`` builds a 0.5B
    model in seconds), save it with ``save_pretrained`` in ``dtype`` beside its tokenizer and a
    sampling generation config; return ``folder``."""
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    folder = Path(folder)
    tokenizer = build_bpe_tokenizer()
    config = qwen2_config(tokenizer, **shape)
    config.initializer_range = init_std
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.to(getattr(torch, dtype))
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    model.generation_config = GenerationConfig(bos_token_id=pad, pad_token_id=pad, eos_token_id=[eos, pad],
                                               do_sample=True, temperature=0.7, top_p=0.8, top_k=20,
                                               repetition_penalty=1.05)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def parameter_count(folder: str | Path) -> int:
    """The parameters of the model saved in ``folder`` (tied embeddings counted once), from its config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder))
    import torch

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def config_of(folder: str | Path) -> dict[str, Any]:
    """The saved ``config.json`` of ``folder``."""
    return json.loads((Path(folder) / "config.json").read_text())
