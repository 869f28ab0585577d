"""What one machine's GPUs do with relaytrain, in one table: run it once on a GPU machine (< 8 minutes).

    python -m bench.gpu_check --out $OUT/gpu_check.md           # a GPU machine: bf16, a ~0.5B Qwen2
    python -m bench.gpu_check --smoke --out /tmp/gpu_check.md   # any CPU: tiny sizes, a few steps
    python -m bench.gpu_check --sections sft-qwen2,ddp          # some sections only

Sections, each within its own time budget and the whole within ``--budget-s`` (420 s); a section
that fails, or that the budget leaves no time for, is a row saying why, never a crash. The table
is rewritten to ``--out`` after every section, so a run cut short still leaves what it measured.

| section | what |
|---|---|
| ``device`` | where the sections ran: the torch device and its name, torch and CUDA versions |
| ``inventory`` | the GPUs as a worker registers them (``relaytrain.worker.inventory.gpu_inventory``, NVML) |
| ``sft-tiny``, ``grpo-tiny`` | the built-in trainers' sessions (``SFTSession``, ``GRPOSession``) on the tiny model |
| ``sft-qwen2``, ``grpo-qwen2`` | the same on a Qwen2 of Qwen2.5-0.5B's shape (494 M parameters; |
| | ``--smoke``: 2 layers of 64), random weights and a BPE tokenizer built here |
| | (``tests/support/real_model.py``), loaded from its ``save_pretrained`` folder |
| ``ddp`` | the built-in SFT of that model on 2 GPUs under torchrun (``trainer.distributed: ddp``), |
| | the same global batch: steps/s ÷ one GPU's |
| ``checkpoint`` | ``bench.checkpoint_io`` on this machine's temp disk: save ÷ dd write, restore (cold) ÷ dd read |

Each training section reports steps/s and tokens/s over the steps after two warm-up steps
(``torch.cuda.synchronize()`` around the timing), the peak GPU memory, and the model FLOPs
utilisation: ``6 · N · tokens/s ÷ the GPU's dense bf16 peak``, N the parameters (tied embeddings
once). SFT's tokens are the sequences' tokens; GRPO's are the prompt and completion tokens the
step trained on (the generation that sampled them is not counted: GRPO's figure is a lower
bound). SFT autocasts to bf16 on CUDA (fp32 master weights, AdamW); so does GRPO. Peaks (dense,
no sparsity) from NVIDIA's data sheets: H100 SXM 989 TFLOPS, H100 PCIe 756, H100 NVL 835, H200
989, A100 312, L40S 362, RTX 4090 165 (FP16 accumulate).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEAK_BF16_TFLOPS: tuple[tuple[str, float, str], ...] = (
    ("H100 PCIe", 756.0, "H100 PCIe"),
    ("H100 NVL", 835.0, "H100 NVL"),
    ("H100", 989.0, "H100 SXM"),
    ("H200", 989.0, "H200"),
    ("A100", 312.0, "A100"),
    ("L40S", 362.0, "L40S"),
    ("4090", 165.0, "RTX 4090"),
)
"""Dense bf16 tensor-core peaks by a substring of the device's name, first match wins (NVIDIA data sheets)."""
SECTIONS = ("device", "inventory", "sft-tiny", "grpo-tiny", "sft-qwen2", "grpo-qwen2", "ddp", "checkpoint")
WARMUP_STEPS = 2
REWARD_SOURCE = '''
import random


def noise(prompts, completions, **kwargs):
    """A random reward: every group has variance, so every completion is trained (random weights
    sample tokens beyond a small tokenizer's vocabulary, which decode to nothing)."""
    return [random.random() for _ in completions]
'''


@dataclass
class Sizes:
    """What each section trains, by mode."""

    budget_s: dict[str, float]
    """Seconds each section may spend measuring (loading not counted; the global budget is)."""
    max_steps: int
    sft_tiny_batch: int
    sft_qwen_batch: int
    sft_qwen_chars: int
    """Characters of each SFT record of the Qwen2 run (about 1.5 characters a token)."""
    grpo_prompts: int
    grpo_generations: int
    grpo_new_tokens: int
    qwen_shape: dict[str, int]
    checkpoint_mb: int
    min_s: dict[str, float] = field(default_factory=dict)
    """Time a section needs at least (loading included) to be started."""


def sizes(smoke: bool) -> Sizes:
    from tests.support.real_model import QWEN2_05B, QWEN2_TINY

    if smoke:
        return Sizes(budget_s=dict.fromkeys(SECTIONS, 10.0), max_steps=3, sft_tiny_batch=8, sft_qwen_batch=4,
                     sft_qwen_chars=200, grpo_prompts=2, grpo_generations=2, grpo_new_tokens=4,
                     qwen_shape=dict(QWEN2_TINY), checkpoint_mb=32, min_s=dict.fromkeys(SECTIONS, 1.0))
    budget = {"sft-tiny": 15.0, "grpo-tiny": 20.0, "sft-qwen2": 40.0, "grpo-qwen2": 45.0, "ddp": 40.0,
              "checkpoint": 60.0}
    needs = {"sft-tiny": 25.0, "grpo-tiny": 30.0, "sft-qwen2": 80.0, "grpo-qwen2": 80.0, "ddp": 100.0,
             "checkpoint": 40.0}
    return Sizes(budget_s=budget, max_steps=10_000, sft_tiny_batch=64, sft_qwen_batch=8, sft_qwen_chars=800,
                 grpo_prompts=8, grpo_generations=8, grpo_new_tokens=64, qwen_shape=dict(QWEN2_05B),
                 checkpoint_mb=1024, min_s=needs)


# -- the table ------------------------------------------------------------------------------------


class Table:
    """Rows of (section, measure, value, note), written to ``out`` as markdown after every section."""

    def __init__(self, out: Path | None, title: str) -> None:
        self.out, self.title, self.rows = out, title, []

    def add(self, section: str, measure: str, value: str, note: str = "") -> None:
        self.rows.append((section, measure, value, note))
        print(f"  {section:11} {measure:26} {value:>14}  {note}", file=sys.stderr, flush=True)

    def markdown(self) -> str:
        lines = [self.title, "", "| section | measure | value | note |", "|---|---|---|---|"]
        lines += [f"| {s} | {m} | {v} | {n.replace('|', '/')} |" for s, m, v, n in self.rows]
        return "\n".join(lines) + "\n"

    def save(self) -> None:
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.out.with_name(self.out.name + ".tmp")
            tmp.write_text(self.markdown())
            os.replace(tmp, self.out)


def peak_tflops(device_name: str) -> tuple[float, str] | None:
    """The dense bf16 peak of a GPU by its name, and the card it was taken for; None when unknown."""
    for key, tflops, card in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops, card
    return None


# -- the machine ----------------------------------------------------------------------------------


def device_rows(table: Table, device: str) -> None:
    import torch

    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        peak = peak_tflops(name)
        table.add("device", "device", f"cuda ({torch.cuda.device_count()} visible)", name)
        table.add("device", "bf16 peak", f"{peak[0]:g} TFLOPS" if peak else "unknown",
                  f"dense, as {peak[1]}" if peak else f"no peak known for {name!r}: MFU not given")
        table.add("device", "versions", f"torch {torch.__version__}", f"CUDA {torch.version.cuda}")
    else:
        table.add("device", "device", "cpu", f"{os.cpu_count()} CPUs, fp32 (no GPU: no bf16, no MFU)")
        table.add("device", "versions", f"torch {torch.__version__}", "")


def inventory_rows(table: Table) -> None:
    from relaytrain.worker.inventory import gpu_inventory

    gpus = gpu_inventory()
    if not gpus:
        table.add("inventory", "GPUs (NVML)", "0", "NVML sees none, or pynvml is missing: a worker registers no GPU")
    for gpu in gpus:
        table.add("inventory", f"GPU {gpu.index}", gpu.name, f"{gpu.memory_mb} MiB, {gpu.uuid}")


# -- training sections ----------------------------------------------------------------------------


@dataclass
class Measured:
    steps: int
    seconds: float
    tokens: int
    generated: int = 0
    peak_gib: float | None = None


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def measure(step: Callable[[], tuple[int, int]], device: str, budget_s: float, max_steps: int) -> Measured:
    """Time ``step()`` (returning tokens trained and tokens generated) after the warm-up steps,
    until ``budget_s`` or ``max_steps``."""
    for _ in range(WARMUP_STEPS):
        step()
    _sync(device)
    steps = tokens = generated = 0
    start = time.perf_counter()
    while steps < max_steps and time.perf_counter() - start < budget_s:
        trained, made = step()
        steps, tokens, generated = steps + 1, tokens + trained, generated + made
    _sync(device)
    seconds = time.perf_counter() - start
    peak = None
    if device == "cuda":
        import torch

        peak = torch.cuda.max_memory_allocated() / (1 << 30)
    return Measured(steps, seconds, tokens, generated, peak)


def training_rows(table: Table, section: str, measured: Measured, params: int, device: str, note: str) -> float:
    """The rows of one training section; returns its steps/s."""
    rate = measured.steps / measured.seconds
    tokens_s = measured.tokens / measured.seconds
    table.add(section, "steps/s", f"{rate:.2f}", f"{measured.steps} steps in {measured.seconds:.1f} s; {note}")
    table.add(section, "tokens/s (trained)", f"{tokens_s:,.0f}", f"{measured.tokens / measured.steps:,.0f} a step")
    if measured.generated:
        table.add(section, "tokens/s (generated)", f"{measured.generated / measured.seconds:,.0f}", "")
    peak = _device_peak(device)
    if peak is not None:
        mfu = 6 * params * tokens_s / (peak * 1e12)
        table.add(section, "MFU", f"{100 * mfu:.2f} %",
                  f"6·N·tokens/s ÷ {peak:g} TFLOPS, N = {params / 1e6:,.1f} M" +
                  ("; generation not counted" if measured.generated else ""))
    if measured.peak_gib is not None:
        table.add(section, "peak GPU memory", f"{measured.peak_gib:.1f} GiB", "torch.cuda.max_memory_allocated")
    return rate


def _device_peak(device: str) -> float | None:
    if device != "cuda":
        return None
    import torch

    found = peak_tflops(torch.cuda.get_device_name(0))
    return found[0] if found else None


def _parameters(model: Any) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def sft_section(table: Table, section: str, model: str, data: dict[str, Any], batch: int, work: Path,
                device: str, size: Sizes) -> float:
    from relaytrain.config import SFTRun
    from relaytrain.contract import Contract
    from relaytrain.train.sft import SFTSession

    config = SFTRun(run_id=section, kind="sft", model=model, data=data, max_steps=size.max_steps + WARMUP_STEPS,
                    trainer={"batch_size": batch, "learning_rate": 1e-5})
    live = {"session": SFTSession(config, Contract.local(work / section), device)}
    params = _parameters(live["session"].model)

    def step() -> tuple[int, int]:
        return int(live["session"].train_step()["tokens"]), 0

    try:
        measured = measure(step, device, size.budget_s[section], size.max_steps)
    finally:
        live.clear()  # the model, optimizer and activations go before the next section
        _free(device)
    return training_rows(table, section, measured, params, device, f"batch {batch}")


def grpo_section(table: Table, section: str, model: str, reward: str, work: Path, device: str, size: Sizes) -> float:
    from relaytrain.config import GRPORun
    from relaytrain.contract import Contract
    from relaytrain.train.grpo import GRPOSession

    config = GRPORun(run_id=section, kind="grpo", model=model, data={"builtin": "arithmetic"},
                     max_steps=size.max_steps + WARMUP_STEPS,
                     trainer={"prompts_per_step": size.grpo_prompts, "num_generations": size.grpo_generations,
                              "max_new_tokens": size.grpo_new_tokens, "rewards": [{"name": reward}],
                              "learning_rate": 1e-6})
    live = {"session": GRPOSession(config, Contract.local(work / section))}
    params = _parameters(live["session"].model)

    def step() -> tuple[int, int]:
        rollout, _ = live["session"].train_step()
        batch = rollout.batch
        return int(batch.prompt_mask.sum()) + int(batch.completion_mask.sum()), int(batch.policy_mask.sum())

    try:
        measured = measure(step, device, size.budget_s[section], size.max_steps)
    finally:
        live.pop("session").close()
        _free(device)
    note = f"{size.grpo_prompts} prompts × {size.grpo_generations}, ≤ {size.grpo_new_tokens} new tokens"
    return training_rows(table, section, measured, params, device, note)


def long_records(path: Path, chars: int, count: int = 256) -> Path:
    """SFT records of about ``chars`` characters each (sums, the Qwen2 tokenizer's trained text)."""
    import random

    rng = random.Random(0)
    with path.open("w") as file:
        for _ in range(count):
            text = ""
            while len(text) < chars:
                a, b = rng.randrange(100), rng.randrange(100)
                text += f"{a}+{b}={a + b} "
            cut = len(text) * 2 // 3
            file.write(json.dumps({"prompt": text[:cut], "completion": text[cut:]}) + "\n")
    return path


# -- DDP ------------------------------------------------------------------------------------------


def ddp_rows(table: Table, model: str, data: dict[str, Any], batch: int, single_rate: float | None, work: Path,
             budget_s: float) -> None:
    """The built-in SFT on 2 GPUs under torchrun, the same global batch as the one-GPU section: the
    median steps/s of its progress windows after the first, then the process tree is killed (no
    final checkpoint to wait for)."""
    import importlib.util

    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible < 2:
        table.add("ddp", "2 GPUs", "not run", f"{visible} GPU(s) visible, needs 2")
        return
    if importlib.util.find_spec("relaytrain.train.distributed") is None:
        table.add("ddp", "2 GPUs", "not run", "this checkout's trainers have no trainer.distributed support yet")
        return
    if single_rate is None:
        table.add("ddp", "2 GPUs", "not run", "no one-GPU sft-qwen2 figure to compare with")
        return
    from relaytrain.config import parse_run_config, run_config_dict

    config = run_config_dict(parse_run_config({
        "run_id": "ddp", "kind": "sft", "model": model, "data": data, "max_steps": 10**6,
        "checkpoint": {"every_steps": 10**6, "keep_last": 1}, "resources": {"gpus": 2},
        "trainer": {"batch_size": batch, "learning_rate": 1e-5,
                    "distributed": {"strategy": "ddp", "nproc_per_node": 2}},
    }))
    root = work / "ddp"
    root.mkdir()
    (root / "run.json").write_text(json.dumps(config))
    progress = root / "progress.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update({"RELAY_RUN_CONFIG": str(root / "run.json"), "RELAY_RUN_ID": "ddp", "RELAY_EPOCH": "1",
                "RELAY_RUN_ROOT": str(root), "RELAY_OUTPUT_DIR": str(root / "checkpoints"),
                "RELAY_PROGRESS_FILE": str(progress), "RELAY_STOP_FILE": str(root / "STOP"),
                "RELAY_RESUME_FROM": ""})
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            "-m", "relaytrain.train.run"]

    def rates() -> list[float]:
        lines = [json.loads(line) for line in progress.read_text().splitlines() if line.endswith("}")] \
            if progress.exists() else []
        return [line["metrics"]["steps_per_s"] for line in lines if "steps_per_s" in line.get("metrics", {})][1:]

    log = (root / "stderr.log").open("w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + budget_s + 90  # + loading the model on each rank
    measuring_since = None
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if rates() and measuring_since is None:
                measuring_since = time.monotonic()
            if measuring_since is not None and time.monotonic() - measuring_since > budget_s:
                break
            time.sleep(0.5)
    finally:
        code = proc.poll()
        if code is None:
            os.killpg(proc.pid, 9)  # the whole tree: torchrun and its ranks
            proc.wait()
        log.close()
    found = rates()
    if not found:
        tail = (root / "stderr.log").read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        why = f"exit {code}" if code is not None else "no progress in time"
        table.add("ddp", "2 GPUs", "failed", f"{why}: {tail[0][:300]}")
        return
    rate = statistics.median(found)
    table.add("ddp", "steps/s, 2 GPUs", f"{rate:.2f}",
              f"median of {len(found)} progress windows; global batch {batch}, {batch // 2} a rank")
    table.add("ddp", "2 GPUs ÷ 1 GPU", f"{rate / single_rate:.2f}", "same global batch; ideal 2.00")


# -- checkpoint I/O -------------------------------------------------------------------------------


def checkpoint_rows(table: Table, size_mb: int, folder: str | None) -> None:
    """One round of ``bench.checkpoint_io`` on ``folder`` (the temp disk by default)."""
    from bench.checkpoint_io import build_state, dd_write, one_round

    size_mb = max(16, size_mb - size_mb % 16)
    state = build_state(size_mb, min(64, size_mb), 1)
    tensors = [tensor for shard in state.values() for tensor in shard.values()]
    results: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix="relay-gpu-check-", dir=folder))
    try:
        dd_write(work / "warmup.bin", size_mb)
        one_round(work, state, tensors, size_mb, 1, False, results.__setitem__)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    note = f"{size_mb} MiB in 1 file, {folder or tempfile.gettempdir()}"
    table.add("checkpoint", "save ÷ dd write", f"{results['dd write (conv=fsync)'] / results['save (sync)']:.2f}",
              f"{note}; target ≥ 0.75")
    table.add("checkpoint", "restore ÷ dd read (cold)", f"{results['dd read, cold'] / results['restore, cold']:.2f}",
              "verified (sha256) load; target ≥ 0.80")
    table.add("checkpoint", "restore GB/s (cold)", f"{size_mb * (1 << 20) / results['restore, cold'] / 1e9:.2f}",
              f"dd read {size_mb * (1 << 20) / results['dd read, cold'] / 1e9:.2f} GB/s")


# -- the run --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the table (markdown) here too")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps: checks the script on a CPU")
    parser.add_argument("--budget-s", type=float, default=420.0, help="the whole run's time (default 420)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--checkpoint-dir", default=None, help="the disk the checkpoint section measures")
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown or not wanted:
        parser.error(f"--sections: unknown section {unknown[0] if unknown else '(none)'!r}; "
                     f"choose from {', '.join(SECTIONS)}")
    if args.budget_s <= 0:
        parser.error(f"--budget-s: must be positive, got {args.budget_s:g}")
    started = time.monotonic()

    import torch

    from relaytrain.train.session import quiet_transformers

    quiet_transformers()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)  # a figure of one core, undisturbed by what else the machine runs
    size = sizes(args.smoke)
    mode = "smoke (tiny sizes)" if args.smoke else "full"
    table = Table(args.out, f"gpu_check on {device}, {mode}: `python -m bench.gpu_check "
                            f"{' '.join(argv if argv is not None else sys.argv[1:])}`")
    work = Path(tempfile.mkdtemp(prefix="relay-gpu-check-"))
    shared: dict[str, Any] = {}

    def qwen2() -> str:
        if "qwen2" not in shared:
            from tests.support.real_model import save_qwen2

            shared["qwen2"] = str(save_qwen2(work / "qwen2", device=device, **size.qwen_shape))
        return shared["qwen2"]

    def reward() -> str:
        path = work / "gpu_check_reward.py"
        path.write_text(REWARD_SOURCE)
        return f"{path}:noise"

    qwen_data = {"path": str(long_records(work / "long.jsonl", size.sft_qwen_chars))}
    runs: dict[str, Callable[[], Any]] = {
        "device": lambda: device_rows(table, device),
        "inventory": lambda: inventory_rows(table),
        "sft-tiny": lambda: sft_section(table, "sft-tiny", "tiny", {"builtin": "arithmetic"}, size.sft_tiny_batch,
                                        work, device, size),
        "grpo-tiny": lambda: grpo_section(table, "grpo-tiny", "tiny", reward(), work, device, size),
        "sft-qwen2": lambda: shared.__setitem__("single", sft_section(
            table, "sft-qwen2", qwen2(), qwen_data, size.sft_qwen_batch, work, device, size)),
        "grpo-qwen2": lambda: grpo_section(table, "grpo-qwen2", qwen2(), reward(), work, device, size),
        "ddp": lambda: ddp_rows(table, qwen2(), qwen_data, size.sft_qwen_batch, shared.get("single"), work,
                                size.budget_s["ddp"]),
        "checkpoint": lambda: checkpoint_rows(table, size.checkpoint_mb, args.checkpoint_dir),
    }
    try:
        for section in SECTIONS:
            if section not in wanted:
                continue
            left = args.budget_s - (time.monotonic() - started)
            needs = size.min_s.get(section, 0.0)
            if left < needs:
                table.add(section, "-", "not run", f"{left:.0f} s of --budget-s left, needs {needs:g}")
                continue
            print(f"{section} ({left:.0f} s left)", file=sys.stderr, flush=True)
            try:
                runs[section]()
            except Exception as exc:  # noqa: BLE001 - one section's failure is its row, the others go on
                traceback.print_exc()
                first = str(exc).splitlines()[0][:300] if str(exc) else ""
                table.add(section, "-", "failed", f"{type(exc).__name__}: {first}")
                _free(device)
            table.save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table.add("total", "wall time", f"{time.monotonic() - started:.0f} s", f"--budget-s {args.budget_s:g}")
    table.save()
    print(table.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
