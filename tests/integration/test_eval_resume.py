"""Evaluation in its own process (automatic and on demand) and `relay resume`, with real workers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.integration.test_cli import relay
from tests.support.relay import counter_final_state, counter_run

pytestmark = pytest.mark.slow


def greedy_exact_match(checkpoint: Path, n: int) -> float:
    """Exact match computed here, one record at a time, without the evaluator's code."""
    import torch

    from relaytrain.train.data import builtin_dataset
    from relaytrain.train.tiny import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(checkpoint))
    model.eval()
    correct = 0
    for example in builtin_dataset("arithmetic", "test")[:n]:
        ids = tokenizer(example.prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        correct += text.strip() == example.answer
    return correct / n


def test_auto_eval_and_relay_eval_score_every_checkpoint(cluster, tmp_path):
    pytest.importorskip("transformers")
    cluster.client.submit({
        "run_id": "sft-eval", "kind": "sft", "model": "tiny", "data": {"builtin": "arithmetic"},
        "max_steps": 30, "checkpoint": {"every_steps": 10, "keep_last": 10}, "store": str(cluster.store),
        "eval": {"every_steps": 10, "dataset": "arithmetic", "samples": 40, "metrics": ["exact_match",
                                                                                       "reward:correctness"]},
    })
    cluster.worker("trainer", None, "--kind", "sft")
    evaluator = cluster.worker("evaluator", None, "--kind", "eval")
    assert cluster.wait_status("sft-eval", ("succeeded", "failed"), 180).status == "succeeded", cluster.logs()
    for step in (10, 20, 30):
        run = cluster.wait_status(f"sft-eval-eval-{step:08d}", ("succeeded", "failed"), 180)
        assert run.status == "succeeded" and run.attempts[0].worker_id == "evaluator", cluster.logs()
    auto = cluster.run("sft-eval").evaluations
    assert sorted(step for ev in auto for step in ev.scores) == [10, 20, 30]
    assert all(set(ev.scores[s]) >= {"exact_match", "reward:correctness"} for ev in auto for s in ev.scores)

    # On demand, all steps in one eval run; step 20's checkpoint is corrupt in the store.
    ckpts = {c.step: Path(c.uri.removeprefix("file://")) for c in cluster.client.checkpoints("sft-eval").items}
    weights = ckpts[20] / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    relay("eval", "--run", "sft-eval", "--samples", "40", "--wait", commander=cluster.commander)
    manual = [ev for ev in cluster.run("sft-eval").evaluations if "-eval-2" in ev.run_id][0]
    assert manual.status == "succeeded" and manual.scores[20]["eval_ok"] == 0
    folder = next(evaluator.workdir.glob(f"runs/{manual.run_id}/evals/arithmetic"))
    rows = {int(r["step"]): r for r in csv.DictReader(open(folder / "consolidated_metrics.csv"))}
    assert sorted(rows) == [10, 20, 30] and rows[20]["status"] == "failed"
    for step in (10, 30):
        assert rows[step]["status"] == "ok"
        assert float(rows[step]["exact_match"]) == pytest.approx(greedy_exact_match(ckpts[step], 40))
        summary = json.loads((folder / f"step_{step:08d}" / "summary.json").read_text())
        assert (summary["device"], summary["dtype"], summary["batch_size"]) == ("cpu", "float32", 64)
        for name in ("metrics.json", "completions.jsonl", "summary.json"):
            assert (folder / f"step_{step:08d}" / name).exists()
            assert (cluster.store / "sft-eval" / "files" / "evals" / "arithmetic" / f"step_{step:08d}" / name).exists()
    assert "sha256" in (folder / "step_00000020" / "summary.json").read_text() or \
        "unusable" in (folder / "step_00000020" / "summary.json").read_text()
    shown = relay("status", "sft-eval", commander=cluster.commander).stdout
    assert "exact_match" in shown and "failed" in shown


def test_resume_reopens_latest_and_forks_older_steps(cluster):
    cluster.client.submit(counter_run("resumable", cluster.store, max_steps=30, every=10))
    cluster.worker("w")
    assert cluster.wait_status("resumable", ("succeeded",)).latest_checkpoint.step == 30
    refused = relay("resume", "resumable", commander=cluster.commander, check=False)
    assert refused.returncode == 1 and "give --additional-steps" in refused.stderr

    out = relay("resume", "resumable", "--additional-steps", "20", commander=cluster.commander).stdout
    assert "re-opened" in out
    run = cluster.wait_status("resumable", ("succeeded", "failed"))
    assert (run.status, run.max_steps, run.latest_checkpoint.step) == ("succeeded", 50, 50)
    assert run.attempts[-1].step_start == 30

    before = sorted(p.name for p in (cluster.store / "resumable" / "checkpoints").iterdir())
    out = relay("resume", "resumable", "--from-step", "20", "--additional-steps", "5", commander=cluster.commander)
    assert "forked into resumable-from-20" in out.stdout
    fork = cluster.wait_status("resumable-from-20", ("succeeded", "failed"))
    assert (fork.status, fork.attempts[0].step_start, fork.latest_checkpoint.step) == ("succeeded", 20, 25)
    state = Path(fork.latest_checkpoint.uri.removeprefix("file://")) / "state.json"
    assert json.loads(state.read_text()) == {"step": 25, "state": counter_final_state(25)}
    assert sorted(p.name for p in (cluster.store / "resumable" / "checkpoints").iterdir()) == before

    missing = relay("resume", "resumable", "--from-step", "7", commander=cluster.commander, check=False)
    assert missing.returncode == 1 and "no durable checkpoint at 7" in missing.stderr


def test_resume_finds_a_relative_local_store_where_the_worker_put_it(cluster, tmp_path):
    """``store: artifacts`` is relative to the worker's folder, not to where ``relay resume`` runs."""
    config = counter_run("relative", "artifacts", max_steps=20, every=10)
    cluster.client.submit(config)
    worker = cluster.worker("w")
    run = cluster.wait_status("relative", ("succeeded",))
    assert run.latest_checkpoint.uri.startswith((worker.workdir / "artifacts").resolve().as_uri())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = relay("resume", "relative", "--additional-steps", "10", commander=cluster.commander, cwd=elsewhere)
    assert "re-opened" in out.stdout
    assert cluster.wait_status("relative", ("succeeded", "failed")).latest_checkpoint.step == 30
    ref = cluster.client.checkpoints("relative").items[-1]
    (Path(ref.uri.removeprefix("file://")) / "state.json").write_text("{}")  # corrupt the durable copy
    bad = relay("resume", "relative", "--additional-steps", "10", commander=cluster.commander, cwd=elsewhere,
                check=False)
    assert bad.returncode == 1 and ref.uri.removeprefix("file://") in bad.stderr
