"""A model of a real architecture through the worker: the path users take with real models.

A Qwen2 causal LM (2 layers, hidden 64, 4 heads, 2 KV heads, tied embeddings, attention biases)
with random weights and a byte-level BPE tokenizer, both built here and saved with
``save_pretrained`` (``tests/support/real_model.py``: no BOS, EOS ``<|im_end|>``, pad
``<|endoftext|>``, ChatML template, a vocabulary larger than the tokenizer's, bf16 weights, a
sampling generation config), is loaded from its folder by real ``relay worker`` processes, trained
with SFT and GRPO, full (generic prompts) and LoRA (peft, q_proj/v_proj; prompts through the
tokenizer's ChatML template), killed with ``kill -9`` after a durable
checkpoint and resumed on another worker. The run ends with the same weights and optimizer state,
bit for bit on CPU, as the same config trained straight through in one process; the
checkpoint's ``model/`` folder loads with ``AutoModelForCausalLM.from_pretrained`` (or
``PeftModel.from_pretrained`` on the base) and gives the checkpoint's weights.

Loading by hub id goes through the same ``from_pretrained`` call with a name instead of a folder:
it is not exercised here (no downloads in tests).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

from relaytrain.config import parse_run_config  # noqa: E402
from tests.integration.test_sft_resume import digests as sft_digests  # noqa: E402
from tests.support.commander import wait_until  # noqa: E402
from tests.support.grpo import finish, launch, reward_file, state_digests  # noqa: E402
from tests.support.real_model import END_OF_TEXT, IM_END, save_qwen2  # noqa: E402

pytestmark = pytest.mark.slow

LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
SFT_STEPS, SFT_EVERY = 150, 15
GRPO_STEPS, GRPO_EVERY = 60, 10


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_qwen2(tmp_path_factory.mktemp("qwen2") / "model")


def run_config(run_id: str, kind: str, model: Path, store: Path, *, lora: bool, reward: str = "") -> dict[str, Any]:
    steps, every = (SFT_STEPS, SFT_EVERY) if kind == "sft" else (GRPO_STEPS, GRPO_EVERY)
    if kind == "sft":
        trainer: dict[str, Any] = {"batch_size": 8, "learning_rate": 3e-3, "seed": 1}
    else:
        trainer = {"prompts_per_step": 4, "num_generations": 4, "max_new_tokens": 6, "learning_rate": 3e-3,
                   "rewards": [{"name": reward}], "seed": 1}
    if lora:
        trainer["lora"] = LORA
    data = {"builtin": "arithmetic", "template": "chat" if lora else "generic"}  # chat: the ChatML template
    return {"run_id": run_id, "kind": kind, "model": str(model), "data": data,
            "max_steps": steps, "trainer": trainer, "checkpoint": {"every_steps": every, "keep_last": 20},
            "lease": {"ttl_s": 3, "margin_s": 1.5, "grace_s": 1}, "store": str(store)}


def relay_with_a_kill(cluster: Any, config: dict[str, Any]) -> Path:
    """Submit ``config``, kill -9 the worker holding it once a checkpoint is durable; the final
    checkpoint of the run, finished by the other worker."""
    run_id = config["run_id"]
    cluster.client.submit(config)
    cluster.worker("a")
    cluster.worker("b")
    every = config["checkpoint"]["every_steps"]
    wait_until(lambda: (c := cluster.run(run_id).latest_checkpoint) and c.step >= every, 180, "a durable step")
    victim = cluster.holder(run_id)
    victim.signal(signal.SIGKILL)
    run = cluster.wait_status(run_id, ("succeeded", "failed"), timeout_s=300)
    assert run.status == "succeeded", cluster.logs()
    assert [a.worker_id != victim.worker_id for a in run.attempts] == [False, True]
    assert 0 < run.attempts[1].step_start < config["max_steps"], "no hand-off mid-run"
    final = Path(run.latest_checkpoint.uri.removeprefix("file://"))
    assert final.name == f"step_{config['max_steps']:08d}"
    return final


def straight(tmp_path: Path, config: dict[str, Any]) -> tuple[Any, Path]:
    """The same run trained straight through in one process by the worker's trainer entry: the
    process (``finish`` it) and its final checkpoint."""
    parsed = parse_run_config({**config, "run_id": "straight"})
    root = tmp_path / "straight"
    proc = launch(parsed, root, config["max_steps"], env={"CUDA_VISIBLE_DEVICES": "", "PYTHONHASHSEED": "0"})
    return proc, root / "checkpoints" / f"step_{config['max_steps']:08d}"


def check_model_folder(checkpoint: Path, base: Path, *, lora: bool) -> None:
    """``model/`` loads with transformers (and peft) alone and holds the checkpoint's weights."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = checkpoint / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == (IM_END, END_OF_TEXT, None)
    assert "<|im_start|>" in tokenizer.chat_template
    if lora:
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(folder))
        saved = load_file(str(folder / "adapter_model.safetensors"))
        live = {k: v for k, v in model.state_dict().items() if "lora_" in k}
        assert len(live) == len(saved) > 0
        assert all(torch.equal(live[k.replace(".weight", ".default.weight")], v) for k, v in saved.items())
        assert any(k.endswith("lora_B.weight") and bool(v.any()) for k, v in saved.items()), "the adapter never moved"
    else:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        saved = load_file(str(folder / "model.safetensors"))
        live = model.state_dict()
        assert all(torch.equal(live[k], v) for k, v in saved.items())
        initial = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).state_dict()
        assert any(not torch.equal(initial[k], v) for k, v in saved.items()), "the weights never moved"
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "untied on load"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "12+7="}], tokenize=False,
                                           add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]


# Each hand-off costs about a minute of CPU: SFT trains the full model and GRPO a LoRA adapter, so both
# trainers and both weight layouts take the path a real model takes (LoRA SFT and full GRPO are covered on
# the tiny model by test_sft_resume.py and test_grpo.py).
@pytest.mark.parametrize("lora", [False], ids=["full"])
def test_sft_on_qwen2_handed_off_mid_run_ends_bit_identical(cluster, tmp_path, qwen2, lora):
    config = run_config("qwen-sft", "sft", qwen2, cluster.store, lora=lora)
    proc, direct = straight(tmp_path, config)
    relayed = relay_with_a_kill(cluster, config)
    finish(proc)
    a, b = sft_digests(relayed), sft_digests(direct)
    assert a.keys() == b.keys() and len(a) > 0
    assert [k for k in a if a[k] != b[k]] == []
    check_model_folder(relayed, qwen2, lora=lora)
    state = json.loads((relayed / "trainer_state.json").read_text())
    assert (state["lora"], state["base_model"]) == (lora, str(qwen2))


@pytest.mark.parametrize("lora", [True], ids=["lora"])
def test_grpo_on_qwen2_handed_off_mid_run_ends_bit_identical(cluster, tmp_path, qwen2, lora):
    reward = reward_file(tmp_path / "rewards")  # digit share: random weights have variance on it
    config = run_config("qwen-grpo", "grpo", qwen2, cluster.store, lora=lora, reward=reward)
    proc, direct = straight(tmp_path, config)
    relayed = relay_with_a_kill(cluster, config)
    finish(proc)
    a, b = state_digests(relayed), state_digests(direct)
    assert a.keys() == b.keys() and len(a) > 0
    assert [k for k in a if a[k] != b[k]] == []
    check_model_folder(relayed, qwen2, lora=lora)
