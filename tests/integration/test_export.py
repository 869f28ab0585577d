"""``relay export``: a checkpoint of any world size as a ``save_pretrained`` folder that
``AutoModelForCausalLM.from_pretrained`` loads with the trained model's logits."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from tests.support.distributed import checkpoint_at, dist_config, final_weights, run_ranks  # noqa: E402

STEPS = 3


def relay_export(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relaytrain.cli", "export", *args], capture_output=True, text=True,
                          timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def logits_of(model: Any) -> Any:
    ids = torch.tensor([[1, 5, 6, 7, 40, 12, 13], [1, 9, 9, 40, 3, 4, 2]])
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def trained(checkpoint: Path) -> Any:
    """The tiny model holding the checkpoint's weights (the DCP shards read into one process)."""
    from relaytrain.train.tiny import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer("tiny", seed=0)
    model.load_state_dict(final_weights(checkpoint), strict=False)  # the tied lm_head follows the embeddings
    return model


def exported(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in folder.iterdir()}
    assert AutoTokenizer.from_pretrained(folder)("12+7=")["input_ids"]
    return AutoModelForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize(("strategy", "nproc"), [(None, 1), ("fsdp", 2)])
def test_export_loads_with_from_pretrained_and_gives_the_trained_logits(tmp_path: Path, strategy: str | None,
                                                                        nproc: int) -> None:
    done = run_ranks(tmp_path / "run", dist_config(strategy=strategy, nproc=nproc, max_steps=STEPS), nproc=nproc)
    assert done.returncode == 0, done.stderr[-4000:]
    checkpoint = checkpoint_at(tmp_path / "run", STEPS)
    assert (checkpoint / "dcp").is_dir() == (strategy == "fsdp")
    result = relay_export(str(checkpoint), str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    want, got = logits_of(trained(checkpoint)), logits_of(exported(tmp_path / "out"))
    assert torch.equal(got, want)  # the same fp32 weights, the same kernels


def test_a_lora_checkpoint_exports_merged(tmp_path: Path) -> None:
    from relaytrain.train.tiny import load_model_and_tokenizer

    config = dist_config(max_steps=STEPS, trainer={"batch_size": 8, "lora": {"r": 4}, "learning_rate": 0.01})
    done = run_ranks(tmp_path / "run", config)
    assert done.returncode == 0, done.stderr[-4000:]
    checkpoint = checkpoint_at(tmp_path / "run", STEPS)
    result = relay_export(str(checkpoint), str(tmp_path / "out"), "--merge-lora")
    assert result.returncode == 0, result.stderr[-3000:]
    adapter_model, _ = load_model_and_tokenizer(str(checkpoint))  # base + adapter, not merged
    base, _ = load_model_and_tokenizer("tiny", seed=0)
    got = logits_of(exported(tmp_path / "out"))
    torch.testing.assert_close(got, logits_of(adapter_model), rtol=1e-5, atol=1e-5)  # merging reorders sums
    assert not torch.allclose(got, logits_of(base), atol=1e-3)  # the adapter was trained and is in there


def test_export_refuses_a_damaged_checkpoint_and_a_full_out(tmp_path: Path) -> None:
    done = run_ranks(tmp_path / "run", dist_config(strategy="fsdp", nproc=2, max_steps=1), nproc=2)
    assert done.returncode == 0, done.stderr[-4000:]
    checkpoint = tmp_path / "copy"
    shutil.copytree(checkpoint_at(tmp_path / "run", 1), checkpoint)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    result = relay_export(str(checkpoint), str(tmp_path / "full"))
    assert result.returncode == 1 and "OUT:" in result.stderr + result.stdout
    shard = checkpoint / "dcp" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-1] + bytes([shard.read_bytes()[-1] ^ 1]))
    result = relay_export(str(checkpoint), str(tmp_path / "out"))
    said = result.stderr + result.stdout
    assert result.returncode == 1 and "dcp/__0_0.distcp" in said and "mismatch" in said
    assert not (tmp_path / "out").exists()


def test_evaluation_scores_a_sharded_checkpoint_with_its_trained_weights(tmp_path: Path) -> None:
    """Evaluation, ``init_from`` and export all load a model through ``train.tiny``: a sharded
    checkpoint's ``model/`` has no weights, they are read whole from its ``dcp/`` shards."""
    from relaytrain.train.tiny import load_model_and_tokenizer

    done = run_ranks(tmp_path / "run", dist_config(strategy="fsdp", nproc=2, max_steps=STEPS), nproc=2)
    assert done.returncode == 0, done.stderr[-4000:]
    checkpoint = checkpoint_at(tmp_path / "run", STEPS)
    assert not list((checkpoint / "model").glob("*.safetensors"))
    model, _ = load_model_and_tokenizer(str(checkpoint))
    state = model.state_dict()
    want = final_weights(checkpoint)
    assert all(torch.equal(state[name], tensor) for name, tensor in want.items())
    fresh, _ = load_model_and_tokenizer("tiny")
    assert not all(torch.equal(fresh.state_dict()[name], tensor) for name, tensor in want.items())
    scored = subprocess.run([sys.executable, "-m", "relaytrain.evaluate.score", "--model", str(checkpoint),
                             "--dataset", "arithmetic", "--samples", "8", "--json"], capture_output=True, text=True,
                            timeout=300)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert '"exact_match"' in scored.stdout
