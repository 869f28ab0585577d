"""The torch engine: completions equal to the trainer's sampler for the same model, keys and
version (what makes trainer- and worker-generated groups interchangeable); weights refused by name."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from relaytrain.rollout.engine import EngineError, TorchEngine, load_tensors  # noqa: E402
from relaytrain.rollout.protocol import GroupLease, ModelSpec, SamplingSettings  # noqa: E402
from relaytrain.train.model_io import unique_tensors  # noqa: E402
from relaytrain.train.sampling import sample_completions  # noqa: E402

PROMPTS = ["12+7=", "3+45=", "99+99=", "rev abc="]


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    from relaytrain.train.tiny import load_model_and_tokenizer

    return load_model_and_tokenizer("tiny", seed=3)


def _settings(tok: Any, **overrides: Any) -> SamplingSettings:
    fields: dict[str, Any] = dict(num_generations=3, max_new_tokens=7, temperature=1.0, top_p=0.95, seed=11,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, vocab_size=len(tok))
    fields.update(overrides)
    return SamplingSettings(**fields)


def _groups(tok: Any, ids: list[int]) -> list[GroupLease]:
    return [GroupLease(group_id=100 + i, attempt=1, prompt_ids=tok(PROMPTS[i])["input_ids"], deadline_s=60)
            for i in ids]


def _engine(model: Any, version: int, lora: dict | None = None) -> TorchEngine:
    engine = TorchEngine(threads=1, device="cpu")
    engine.load(ModelSpec(config=model.config.to_dict(), lora=lora))
    engine.set_weights(version, {k: v.clone() for k, v in unique_tensors(model).items()})
    return engine


def _expected(model: Any, groups: list[GroupLease], settings: SamplingSettings, version: int) -> list[list[tuple]]:
    batch = sample_completions(
        model, [g.prompt_ids for g in groups], prompt_keys=[g.group_id for g in groups],
        num_generations=settings.num_generations, seed=settings.seed, step=version,
        eos_token_id=settings.eos_token_id, pad_token_id=settings.pad_token_id,
        max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, top_p=settings.top_p,
    )  # fmt: skip
    out = []
    for p in range(len(groups)):
        rows = []
        for r in range(p * settings.num_generations, (p + 1) * settings.num_generations):
            n = int(batch.completion_mask[r].sum())
            rows.append((batch.completion_ids[r, :n].tolist(), batch.sampling_logps[r, :n].tolist(),
                         not bool(batch.truncated[r])))
        out.append(rows)
    return out


def _got(completions: list[list[Any]]) -> list[list[tuple]]:
    return [[(c.token_ids, c.logps, c.finished) for c in group] for group in completions]


def test_torch_engine_samples_what_the_trainer_samples(tiny):
    model, tok = tiny
    settings, groups = _settings(tok), _groups(tok, [0, 1, 2, 3])
    engine = _engine(model, version=5)
    got = engine.generate(groups, settings, version=5)
    assert _got(got) == _expected(model, groups, settings, 5)
    assert [len(g) for g in got] == [3, 3, 3, 3]
    # a group's tokens do not depend on what else is in the batch (the log-probs may, by rounding)
    alone = engine.generate(_groups(tok, [2]), settings, version=5)
    assert [c.token_ids for c in alone[0]] == [c.token_ids for c in got[2]]


def test_torch_engine_with_lora_takes_the_peft_state_dict(tiny):
    from relaytrain.config import LoraConfig
    from relaytrain.train.session import with_lora

    model, tok = tiny
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    base_config = model.config.to_dict()
    import copy

    peft_model = with_lora(copy.deepcopy(model), LoraConfig(**lora))
    with torch.no_grad():  # a trained adapter: B is no longer zero
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    engine = TorchEngine(threads=1, device="cpu")
    engine.load(ModelSpec(config=base_config, lora=lora))
    engine.set_weights(2, {k: v.clone() for k, v in unique_tensors(peft_model).items()})
    settings, groups = _settings(tok), _groups(tok, [0, 3])
    assert _got(engine.generate(groups, settings, version=2)) == _expected(peft_model, groups, settings, 2)


def test_new_weights_change_the_completions_only_from_the_next_version(tiny):
    model, tok = tiny
    settings, groups = _settings(tok), _groups(tok, [0, 1])
    engine = _engine(model, version=1)
    before = _got(engine.generate(groups, settings, version=1))
    other = {k: v + 0.05 for k, v in unique_tensors(model).items()}
    engine.set_weights(2, other)
    assert engine.version == 2
    with pytest.raises(EngineError, match="v1, holding v2"):
        engine.generate(groups, settings, version=1)
    assert _got(engine.generate(groups, settings, version=2)) != before


def test_weights_that_do_not_match_are_refused_by_name(tiny):
    model, _ = tiny
    engine = _engine(model, version=1)
    tensors = dict(unique_tensors(model))
    missing = dict(tensors)
    del missing["model.norm.weight"]
    with pytest.raises(EngineError, match=r"missing \['model.norm.weight'\]"):
        engine.set_weights(2, missing)
    with pytest.raises(EngineError, match=r"unexpected \['extra.weight'\]"):
        engine.set_weights(2, {**tensors, "extra.weight": torch.zeros(1)})
    with pytest.raises(EngineError, match="do not fit"):
        engine.set_weights(2, {**tensors, "model.norm.weight": torch.zeros(3)})
    assert engine.version == 1  # nothing changed


def test_a_config_without_model_type_and_a_bad_file_are_clear_errors():
    engine = TorchEngine(threads=1, device="cpu")
    with pytest.raises(EngineError, match="model_type"):
        engine.load(ModelSpec(config={"hidden_size": 8}))
    with pytest.raises(EngineError, match="safetensors"):
        load_tensors(b"not a safetensors file")


def test_load_tensors_reads_what_safetensors_wrote():
    from safetensors.torch import save

    data = save({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)})  # bytes, as well as bytearray
    assert torch.equal(load_tensors(data)["a"], torch.arange(6, dtype=torch.float32).reshape(2, 3))


def test_load_tensors_reads_every_dtype_as_safetensors_does():
    from safetensors.torch import load, save

    g = torch.Generator().manual_seed(1)
    tensors = {
        "f32": torch.randn(3, 4, generator=g), "bf16": torch.randn(5, generator=g).bfloat16(),
        "f16": torch.randn(2, 2, generator=g).half(), "i64": torch.arange(7), "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.5), "bool": torch.tensor([True, False]),
    }  # fmt: skip
    data = save(tensors, metadata={"format": "pt"})
    ours, theirs = load_tensors(bytearray(data)), load(data)
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype and ours[name].shape == tensor.shape
        assert torch.equal(ours[name], tensor), name
