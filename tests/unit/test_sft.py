"""The SFT trainer in-process: batching, schedules, checkpoint state, stop, init_from, LoRA folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from relaytrain.checkpoint import CheckpointManager, find_latest_valid, load_checkpoint  # noqa: E402
from relaytrain.config import SFTRun  # noqa: E402
from relaytrain.contract import Contract  # noqa: E402
from relaytrain.errors import CheckpointError, ConfigError  # noqa: E402
from relaytrain.train.sft import SFTSession, collate, make_scheduler, run_sft, tokenize_samples  # noqa: E402
from relaytrain.train.templates import Sample  # noqa: E402
from relaytrain.train.tiny import build_char_tokenizer, load_model_and_tokenizer  # noqa: E402

CPU = "cpu"  # bit-exact comparisons are a CPU guarantee

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft → transformers


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """Numbers compared bit for bit come from one thread; and 2 shared cores run faster so."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sft(tmp_path: Path, max_steps: int = 4, **trainer: Any) -> SFTRun:
    dataset = tmp_path / "data.jsonl"
    if not dataset.exists():
        rows = [{"prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(7)]
        dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return SFTRun.model_validate(
        {
            "run_id": "unit",
            "kind": "sft",
            "max_steps": max_steps,
            "data": {"path": str(dataset)},
            "checkpoint": {"every_steps": 2, "keep_last": 5},
            "trainer": {"batch_size": 3, **trainer},
        }
    )


def tensors_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_loss_only_on_completion_and_eos() -> None:
    tokenizer = build_char_tokenizer()
    rows = tokenize_samples([Sample("12+7=", "19", "19"), Sample("1+1=", "2", "2")], tokenizer, 64)
    assert rows[0] == ([1, *tokenizer("12+7=19", add_special_tokens=False)["input_ids"], 2], 6)
    batch = collate(rows, tokenizer.pad_token_id)
    eos = tokenizer.eos_token_id
    labels = batch["labels"].tolist()
    assert [t for t in labels[0] if t != -100] == [*tokenizer("19", add_special_tokens=False)["input_ids"], eos]
    assert [t for t in labels[1] if t != -100] == [*tokenizer("2", add_special_tokens=False)["input_ids"], eos]
    assert batch["attention_mask"][1].tolist() == [1] * 7 + [0] * 2  # right padding for training


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [("constant", [0.5, 1.0, 1.0, 1.0]), ("linear", [0.5, 1.0, 0.5, 0.0]), ("cosine", [0.5, 1.0, 0.5, 0.0])],
)
def test_schedules_with_warmup(schedule: str, expected: list[float]) -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(optimizer, schedule, warmup_steps=1, total_steps=3)
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx(expected)


def test_checkpoint_state_round_trip_continues_identically(tmp_path: Path) -> None:
    config = sft(tmp_path, max_steps=6, schedule="cosine", warmup_steps=2, grad_accum_steps=2)
    first = SFTSession(config, Contract.local(tmp_path / "a"), CPU)
    for _ in range(3):
        first.train_step()
    with CheckpointManager(tmp_path / "ckpt") as manager:
        path = manager.save(first.checkpoint_state(), first.step)
    for _ in range(3):
        first.train_step()
    second = SFTSession(config, Contract.local(tmp_path / "b"), CPU)
    second.load_checkpoint(path)
    assert second.step == 3 and second.cursor.state_dict() == {"num_examples": 7, "seed": 0, "epoch": 2, "position": 4}
    for _ in range(3):
        second.train_step()
    assert tensors_equal(first.model.state_dict(), second.model.state_dict())
    assert first.scheduler.state_dict() == second.scheduler.state_dict()
    assert first.cursor.state_dict() == second.cursor.state_dict()


def test_run_writes_loadable_checkpoints_and_progress(tmp_path: Path) -> None:
    contract = Contract.local(tmp_path / "out")
    assert run_sft(sft(tmp_path, max_steps=5), contract, CPU) == 0
    assert [p.name for p in sorted((tmp_path / "out").glob("step_*"))] == [
        "step_00000002",
        "step_00000004",
        "step_00000005",
    ]
    lines = [json.loads(line) for line in (tmp_path / "out" / "progress.jsonl").read_text().splitlines()]
    checkpoints = [line["step"] for line in lines if line.get("event") == "checkpoint"]
    assert checkpoints == [2, 4, 5]
    metrics = [line for line in lines if "metrics" in line][-1]
    assert metrics["step"] == 5 and {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(metrics["metrics"])
    final = tmp_path / "out" / "step_00000005"
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(str(final / "model"))  # the folder stands on its own
    ours, tokenizer = load_model_and_tokenizer(str(final))
    assert tensors_equal(plain.state_dict(), ours.state_dict())
    assert tokenizer.decode(tokenizer("3+1=")["input_ids"], skip_special_tokens=True) == "3+1="
    state = load_checkpoint(final)["trainer_state.json"]
    assert state["step"] == 5 and state["kind"] == "sft" and state["metrics"]["loss"] > 0

    again = Contract.local(tmp_path / "out", resume_from=final)  # already at max_steps: nothing to do
    assert run_sft(sft(tmp_path, max_steps=5), again, CPU) == 0
    assert find_latest_valid(tmp_path / "out").step == 5


def test_stop_request_checkpoints_at_the_step_boundary(tmp_path: Path) -> None:
    contract = Contract.local(tmp_path / "out", resume_from=None)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "STOP").touch()
    assert run_sft(sft(tmp_path, max_steps=50), contract, CPU) == 0
    assert not list((tmp_path / "out").glob("step_*"))  # nothing trained, nothing to save

    class StopBeforeStep4(Contract):
        """Asks to stop at the 4th step boundary, as a SIGTERM arriving during step 3 would."""

        calls = 0

        def should_stop(self) -> bool:
            self.calls += 1
            if self.calls == 4:
                self.request_stop("test")
            return super().should_stop()

    stopping = StopBeforeStep4(output_dir=tmp_path / "run2", progress_file=tmp_path / "run2" / "progress.jsonl")
    config = sft(tmp_path, max_steps=50)  # checkpoints every 2 steps
    assert run_sft(config, stopping, CPU) == 0
    assert [p.name for p in sorted((tmp_path / "run2").glob("step_*"))] == ["step_00000002", "step_00000003"]
    assert load_checkpoint(tmp_path / "run2" / "step_00000003")["trainer_state.json"]["step"] == 3


def test_async_save_matches_sync(tmp_path: Path) -> None:
    config = sft(tmp_path, max_steps=4)
    dump = config.model_dump()
    async_config = SFTRun.model_validate({**dump, "checkpoint": {**dump["checkpoint"], "async_save": True}})
    assert run_sft(config, Contract.local(tmp_path / "sync"), CPU) == 0
    assert run_sft(async_config, Contract.local(tmp_path / "async"), CPU) == 0
    a = load_checkpoint(tmp_path / "sync" / "step_00000004")
    b = load_checkpoint(tmp_path / "async" / "step_00000004")
    assert tensors_equal(a["model/model.safetensors"], b["model/model.safetensors"])


def test_lora_checkpoint_is_an_adapter_that_loads_with_its_base(tmp_path: Path) -> None:
    config = sft(tmp_path, max_steps=2, learning_rate=0.05, lora={"r": 4, "alpha": 8})
    session = SFTSession(config, Contract.local(tmp_path / "out"), CPU)
    session.train_step()
    session.train_step()
    with CheckpointManager(tmp_path / "out") as manager:
        path = manager.save(session.checkpoint_state(), session.step)
    assert path is not None
    files = {p.name for p in (path / "model").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= files
    assert "model.safetensors" not in files
    merged, tokenizer = load_model_and_tokenizer(str(path), merge_lora=True)
    ids = tokenizer(["5+1="], return_tensors="pt")["input_ids"]
    session.model.eval()
    with torch.no_grad():
        assert torch.allclose(session.model(ids).logits, merged(ids).logits, atol=1e-5)
    full = SFTSession(sft(tmp_path, max_steps=2), Contract.local(tmp_path / "other"), CPU)
    with pytest.raises(ConfigError, match="LoRA"):
        full.load_checkpoint(path)


def test_init_from_takes_only_the_weights(tmp_path: Path) -> None:
    source = SFTSession(sft(tmp_path, max_steps=3), Contract.local(tmp_path / "src"), CPU)
    for _ in range(3):
        source.train_step()
    with CheckpointManager(tmp_path / "src") as manager:
        path = manager.save(source.checkpoint_state(), source.step)
    child = SFTSession(sft(tmp_path, max_steps=3), Contract.local(tmp_path / "child", init_from=str(path)), CPU)
    assert child.step == 0 and child.cursor.examples_seen == 0
    assert tensors_equal(source.model.state_dict(), child.model.state_dict())
    with pytest.raises(ConfigError, match="init_from.run"):
        config = SFTRun.model_validate({**sft(tmp_path).model_dump(), "init_from": {"run": "parent"}})
        SFTSession(config, Contract.local(tmp_path / "c"), CPU)


def test_corrupt_resume_checkpoint_is_refused(tmp_path: Path) -> None:
    assert run_sft(sft(tmp_path, max_steps=2), Contract.local(tmp_path / "out"), CPU) == 0
    path = tmp_path / "out" / "step_00000002"
    optimizer = path / "optimizer.pt"
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, size unchanged
    optimizer.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        run_sft(sft(tmp_path, max_steps=4), Contract.local(tmp_path / "out", resume_from=path), CPU)


@pytest.mark.parametrize("template", ["r1", "chat"])
def test_templates_train_end_to_end(tmp_path: Path, template: str) -> None:
    base = sft(tmp_path, max_steps=2).model_dump()
    config = SFTRun.model_validate({**base, "data": {**base["data"], "template": template}})
    session = SFTSession(config, Contract.local(tmp_path / "out"), CPU)
    ids, prompt_len = session.rows[0]
    completion = session.tokenizer.decode(ids[prompt_len:], skip_special_tokens=True)
    prompt = session.tokenizer.decode(ids[:prompt_len], skip_special_tokens=True)
    if template == "r1":
        assert completion == "<think></think><answer>1</answer>" and "<answer>" in prompt
    else:
        assert prompt == "user: 0+1=\nassistant: " and completion == "1"
    assert session.train_step()["loss"] > 0
