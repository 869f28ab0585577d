"""Evaluation: batched greedy completion gives one-by-one's answers on CPU in float32, whatever the
model's own generation config says; the scorer records its device, dtype and batch size; an eval
run asks for a GPU exactly when its source did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relaytrain.api.evals import build_eval_run

pytest.importorskip("transformers")

from relaytrain.evaluate.score import eval_device, main  # noqa: E402
from relaytrain.train.data import builtin_dataset  # noqa: E402
from relaytrain.train.exact_match import evaluate_exact_match, greedy_complete  # noqa: E402
from relaytrain.train.tiny import load_model_and_tokenizer  # noqa: E402
from tests.support.real_model import save_qwen2  # noqa: E402


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_qwen2(tmp_path_factory.mktemp("qwen2") / "model", seed=3, init_std=0.2)


def _model(name: str, qwen2: Path):
    if name == "tiny":
        return load_model_and_tokenizer("tiny", seed=5)
    return load_model_and_tokenizer(str(qwen2))


@pytest.mark.parametrize("name", ["tiny", "qwen2"])
@pytest.mark.parametrize("template", ["generic", "chat"])
def test_batched_greedy_gives_the_answers_of_one_by_one(name, template, qwen2):
    model, tokenizer = _model(name, qwen2)
    records = builtin_dataset("arithmetic", "test")[:24]  # prompts of 4 to 6 characters: padding in every batch
    one = evaluate_exact_match(model, tokenizer, records, 6, template=template, batch_size=1)
    batched = evaluate_exact_match(model, tokenizer, records, 6, template=template, batch_size=16)
    assert batched.completions == one.completions
    assert (batched.correct, batched.accuracy) == (one.correct, one.accuracy)
    assert len(set(one.completions)) > 1, "every completion alike: the comparison would prove little"


def test_greedy_ignores_the_sampling_settings_a_model_ships_with(qwen2):
    """The Qwen2 folder's generation_config samples (temperature, top-p/k) with a repetition penalty:
    greedy completion is still the argmax of each step's logits."""
    import torch

    model, tokenizer = load_model_and_tokenizer(str(qwen2))
    assert model.generation_config.repetition_penalty == 1.05 and model.generation_config.do_sample
    model.eval()
    prompt = "12+7="
    ids = tokenizer(prompt)["input_ids"]
    expected = []
    with torch.no_grad():
        for _ in range(8):
            token = int(model(torch.tensor([ids + expected])).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            expected.append(token)
    assert greedy_complete(model, tokenizer, [prompt], 8) == [tokenizer.decode(expected, skip_special_tokens=True)]
    assert len(set(expected)) < len(expected), "no repeated token: a repetition penalty would change nothing"


def test_greedy_refuses_a_batch_size_below_one():
    model, tokenizer = load_model_and_tokenizer("tiny")
    with pytest.raises(ValueError, match="batch_size"):
        greedy_complete(model, tokenizer, ["1+1="], 4, batch_size=0)


def test_score_writes_device_dtype_and_batch_size_in_its_summary(tmp_path, capsys):
    out = tmp_path / "step"
    assert main(["--model", "tiny", "--samples", "12", "--batch-size", "5", "--device", "auto", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["device"], summary["dtype"], summary["batch_size"]) == ("cpu", "float32", 5)
    assert summary["records"] == 12 and summary["status"] == "ok"


def test_score_refuses_a_bad_batch_size_or_a_missing_gpu(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--model", "tiny", "--batch-size", "0"])
    assert "--batch-size" in capsys.readouterr().err
    assert eval_device("cpu") == ("cpu", "float32")
    assert main(["--model", "tiny", "--device", "cuda", "--samples", "2"]) == 78
    assert "--device: cuda asked" in capsys.readouterr().err


def _source(gpus: int | None) -> dict:
    config = {"run_id": "src", "kind": "sft", "store": "./artifacts", "retry": {"max_retries": 3}}
    if gpus is not None:
        config["resources"] = {"gpus": gpus, "labels": {"zone": "eu"}}
    return {"run_id": "src", "priority": 0, "config": config}


@pytest.mark.parametrize(("gpus", "asked"), [(None, 0), (0, 0), (1, 1), (8, 1)])
def test_an_eval_run_asks_for_one_gpu_when_its_source_asked_for_any(gpus, asked):
    run = build_eval_run(_source(gpus), {"batch_size": 32}, steps="all", tag="t")
    assert run.resources.gpus == asked
    assert run.trainer.batch_size == 32
    assert build_eval_run(_source(gpus), {}, steps="all", tag="t").trainer.batch_size == 64
