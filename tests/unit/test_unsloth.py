"""``--use-unsloth`` / ``trainer.use_unsloth``: a clear permanent failure without unsloth, and the
calls the trainers make to it when it is there.

unsloth needs an NVIDIA GPU, so it cannot run here: the last test puts a stand-in ``unsloth``
package on ``sys.path`` (its boundary: ``FastLanguageModel.from_pretrained`` and
``get_peft_model``) that loads with transformers and peft, and checks what the trainer asked of it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from relaytrain.config import GRPORun, SFTRun
from relaytrain.contract import Contract, ExitCode
from relaytrain.errors import ConfigError
from relaytrain.train.model_io import is_lora
from relaytrain.train.sft import SFTSession
from relaytrain.train.standalone import build_parser
from relaytrain.train.standalone import main as standalone_main
from relaytrain.train.tiny import build_char_tokenizer, build_tiny_model

FAKE_UNSLOTH = '''
import json, os
from relaytrain.train.tiny import load_model_and_tokenizer

CALLS = []

class FastLanguageModel:
    @staticmethod
    def from_pretrained(model_name, max_seq_length, dtype, load_in_4bit, **kwargs):
        CALLS.append(("from_pretrained", {"model_name": model_name, "load_in_4bit": load_in_4bit}))
        return load_model_and_tokenizer(model_name)

    @staticmethod
    def get_peft_model(model, r, lora_alpha, lora_dropout, target_modules, bias, random_state, **kwargs):
        from peft import LoraConfig, get_peft_model
        CALLS.append(("get_peft_model", {"r": r, "lora_alpha": lora_alpha, "target_modules": target_modules,
                                         "random_state": random_state}))
        config = LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules,
                            bias=bias, task_type="CAUSAL_LM")
        return get_peft_model(model, config)
'''


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """The tiny model saved as an ordinary transformers folder (unsloth loads folders and hub ids)."""
    folder = tmp_path / "tiny-model"
    tokenizer = build_char_tokenizer()
    build_tiny_model(0, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def sft_config(model: str, **trainer: object) -> SFTRun:
    return SFTRun.model_validate({"run_id": "u", "kind": "sft", "model": model, "max_steps": 2,
                                  "data": {"builtin": "arithmetic"},
                                  "trainer": {"batch_size": 8, "use_unsloth": True, **trainer}})


def test_the_flag_reaches_both_trainers(tmp_path: Path) -> None:
    parser, available = build_parser()
    for trainer, kind in (("sft", SFTRun), ("grpo", GRPORun)):
        args = parser.parse_args([trainer, "--max-steps", "3", "--output-dir", str(tmp_path), "--use-unsloth"])
        config = available[trainer].build_config(args)
        assert isinstance(config, kind) and config.trainer.use_unsloth
        args = parser.parse_args([trainer, "--max-steps", "3", "--output-dir", str(tmp_path)])
        assert not available[trainer].build_config(args).trainer.use_unsloth


def test_without_unsloth_the_run_fails_at_start_naming_it(tmp_path: Path, model_dir: Path, monkeypatch,
                                                          caplog) -> None:
    monkeypatch.setitem(sys.modules, "unsloth", None)  # not importable, even where it is installed
    out = tmp_path / "out"
    code = standalone_main(["sft", "--model", str(model_dir), "--max-steps", "3", "--output-dir", str(out),
                            "--use-unsloth"])
    assert code == ExitCode.CONFIG  # permanent: the worker does not retry it
    assert "trainer.use_unsloth: unsloth is not installed" in caplog.text
    assert not any(out.glob("step_*")), "nothing is trained or saved"
    with pytest.raises(ConfigError, match="not the built-in 'tiny'"):
        SFTSession(sft_config("tiny"), Contract.local(tmp_path / "tiny"))


def test_with_unsloth_the_trainer_loads_and_adapts_through_it(tmp_path: Path, model_dir: Path, monkeypatch) -> None:
    package = tmp_path / "site" / "unsloth"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_UNSLOTH)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "unsloth", raising=False)

    config = sft_config(str(model_dir), lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "k_proj"]}, seed=5)
    session = SFTSession(config, Contract.local(tmp_path / "out"))
    import unsloth

    assert unsloth.CALLS == [
        ("from_pretrained", {"model_name": str(model_dir), "load_in_4bit": False}),
        ("get_peft_model", {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj"], "random_state": 5}),
    ]
    assert is_lora(session.model) and session.tokenizer.padding_side == "left"
    before = {k: v.clone() for k, v in session.model.named_parameters() if v.requires_grad}
    metrics = session.train_step()
    after = dict(session.model.named_parameters())
    assert metrics["loss"] > 0 and any(not after[k].equal(v) for k, v in before.items())
    json.dumps(metrics)  # progress lines stay JSON
