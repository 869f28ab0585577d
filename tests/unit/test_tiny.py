"""The tiny model and its character-level tokenizer: built locally, saved and loaded back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch  # noqa: E402

from relaytrain.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft → transformers
from relaytrain.train.tiny import (  # noqa: E402
    CHARACTERS,
    MODEL_META_FILE,
    build_char_tokenizer,
    build_tiny_model,
    load_model_and_tokenizer,
    model_folder,
)


def test_round_trip_inserts_no_spaces() -> None:
    tokenizer = build_char_tokenizer()
    text = "12+7=19 <think>a b</think><answer>x/y</answer>\nDone!"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert len(ids) == len(text) + 1  # one token per character, plus <s>
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.unk_token_id not in ids


def test_every_character_has_its_own_token() -> None:
    tokenizer = build_char_tokenizer()
    ids = tokenizer(CHARACTERS, add_special_tokens=False)["input_ids"]
    assert len(set(ids)) == len(CHARACTERS)
    assert tokenizer("é", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]


def test_left_padding_for_generation() -> None:
    tokenizer = build_char_tokenizer()
    batch = tokenizer(["1+1=", "12+34="], padding=True, return_tensors="pt")
    pad = tokenizer.pad_token_id
    assert batch["input_ids"][0, :2].tolist() == [pad, pad]
    assert batch["attention_mask"][0].tolist() == [0, 0, 1, 1, 1, 1, 1]
    assert batch["input_ids"][1, -1].item() == tokenizer.convert_tokens_to_ids("=")


def test_tiny_model_is_deterministic_by_seed_and_leaves_global_rng_alone() -> None:
    before = torch.get_rng_state()
    a, b, c = build_tiny_model(3), build_tiny_model(3), build_tiny_model(4)
    assert torch.equal(torch.get_rng_state(), before)
    assert 1_000_000 < sum(p.numel() for p in a.parameters()) < 1_100_000
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in pairs)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    assert a.lm_head.weight is a.model.embed_tokens.weight  # tied


def test_save_and_load_model_folder_and_checkpoint_folder(tmp_path: Path) -> None:
    model, tokenizer = load_model_and_tokenizer("tiny", seed=1)
    folder = tmp_path / "step_00000010" / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for source in (folder, folder.parent):  # a model folder, or a checkpoint holding model/
        loaded, loaded_tok = load_model_and_tokenizer(str(source))
        assert model_folder(source) == folder
        assert loaded_tok.padding_side == "left"
        assert loaded_tok.decode(loaded_tok("9+9=")["input_ids"], skip_special_tokens=True) == "9+9="
        for (name, x), (_, y) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
            assert torch.equal(x, y), name


def test_lora_adapter_folder_loads_with_its_base(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    base, tokenizer = load_model_and_tokenizer("tiny", seed=2)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.01)
    folder = tmp_path / "adapter"
    peft_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / MODEL_META_FILE).write_text(json.dumps({"base_model": "tiny", "seed": 2}))
    loaded, _ = load_model_and_tokenizer(str(folder), merge_lora=True)
    ids = tokenizer(["12+7="], return_tensors="pt")["input_ids"]
    peft_model.eval()
    with torch.no_grad():
        assert torch.allclose(peft_model(ids).logits, loaded(ids).logits, atol=1e-5)


def test_missing_model_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model"):
        load_model_and_tokenizer(str(tmp_path / "nope"))


def test_left_padded_greedy_generation_matches_unpadded() -> None:
    from relaytrain.train.exact_match import greedy_complete

    model, tokenizer = load_model_and_tokenizer("tiny", seed=5)
    prompts = ["1+1=", "12+34=", "99+9="]
    together = greedy_complete(model, tokenizer, prompts, 5)
    alone = [greedy_complete(model, tokenizer, [p], 5)[0] for p in prompts]
    assert together == alone
