"""bench/gpu_check.py on this CPU (``--smoke``): one table, every section a row, a failing section
a row saying why while the others still run. The full run is for a GPU machine (docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def gpu_check(*args: str) -> tuple[subprocess.CompletedProcess[str], dict[tuple[str, str], tuple[str, str]]]:
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--smoke", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] not in ("section", "---"):
            rows[(cells[0], cells[1])] = (cells[2], cells[3])
    return done, rows


def test_smoke_run_gives_every_section_its_rows(tmp_path):
    out = tmp_path / "gpu_check.md"
    done, rows = gpu_check("--out", str(out))
    assert out.read_text().strip() in done.stdout
    assert rows[("device", "device")][0] == "cpu"
    assert ("inventory", "GPUs (NVML)") in rows
    for section in ("sft-tiny", "grpo-tiny", "sft-qwen2", "grpo-qwen2"):
        assert float(rows[(section, "steps/s")][0]) > 0, section
        assert float(rows[(section, "tokens/s (trained)")][0].replace(",", "")) > 0, section
        assert (section, "MFU") not in rows  # no GPU, no peak
    assert float(rows[("grpo-qwen2", "tokens/s (generated)")][0].replace(",", "")) > 0
    assert rows[("ddp", "2 GPUs")] == ("not run", "0 GPU(s) visible, needs 2")
    assert float(rows[("checkpoint", "save ÷ dd write")][0]) > 0
    assert float(rows[("checkpoint", "restore ÷ dd read (cold)")][0]) > 0
    assert ("total", "wall time") in rows


def test_a_failing_section_is_a_row_and_the_others_run(tmp_path):
    missing = tmp_path / "no-such-disk"
    _, rows = gpu_check("--sections", "checkpoint,sft-tiny", "--checkpoint-dir", str(missing),
                        "--out", str(tmp_path / "t.md"))
    value, note = rows[("checkpoint", "-")]
    assert value == "failed" and "FileNotFoundError" in note
    assert float(rows[("sft-tiny", "steps/s")][0]) > 0
    assert not any(section in ("grpo-tiny", "ddp") for section, _ in rows)


def test_bad_arguments_are_refused_naming_them():
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--sections", "sft,nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--sections: unknown section 'sft'" in done.stderr


def test_peaks_are_found_by_the_names_nvml_gives():
    from bench.gpu_check import peak_tflops

    assert peak_tflops("NVIDIA H100 80GB HBM3") == (989.0, "H100 SXM")
    assert peak_tflops("NVIDIA H100 PCIe") == (756.0, "H100 PCIe")
    assert peak_tflops("NVIDIA H200") == (989.0, "H200")
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == (312.0, "A100")
    assert peak_tflops("NVIDIA GeForce RTX 4090") == (165.0, "RTX 4090")
    assert peak_tflops("Tesla T4") is None


def test_sections_the_budget_leaves_no_time_for_are_rows_saying_so(tmp_path):
    _, rows = gpu_check("--sections", "sft-tiny,checkpoint", "--budget-s", "0.01", "--out", str(tmp_path / "t.md"))
    for section in ("sft-tiny", "checkpoint"):
        value, note = rows[(section, "-")]
        assert value == "not run" and "of --budget-s left" in note
