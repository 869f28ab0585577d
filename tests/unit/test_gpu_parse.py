"""nvidia-smi parsing on recorded outputs of 1, 2, 4 and 8-GPU machines, and on malformed ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaytrain.providers.gpu import NVIDIA_SMI_QUERY, GpuParseError, free_indices, parse_nvidia_smi

DATA = Path(__file__).resolve().parents[1] / "data" / "nvidia_smi"


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def test_the_query_asks_for_the_five_fields_without_header_or_units():
    assert "--query-gpu=index,name,memory.total,memory.used,utilization.gpu" in NVIDIA_SMI_QUERY
    assert "--format=csv,noheader,nounits" in NVIDIA_SMI_QUERY


@pytest.mark.parametrize(
    ("name", "count", "gpu_name", "free"),
    [
        ("1gpu_rtx4090.csv", 1, "NVIDIA GeForce RTX 4090", []),  # 1.9 GB used, 37 %: busy
        ("2gpu_a100.csv", 2, "NVIDIA A100-SXM4-80GB", [0, 1]),
        ("4gpu_l40s.csv", 4, "NVIDIA L40S", [0, 2, 3]),  # 1 is training; 3 reports [N/A] utilisation
        ("8gpu_h100.csv", 8, "NVIDIA H100 80GB HBM3", [0, 1, 4, 7]),  # 5 holds 2 GB, 6 is at 45 %
    ],
)
def test_recorded_machines(name, count, gpu_name, free):
    gpus = parse_nvidia_smi(recorded(name))
    assert [g.index for g in gpus] == list(range(count))
    assert {g.name for g in gpus} == {gpu_name}
    assert free_indices(gpus) == free


def test_fields_are_typed_and_na_utilisation_is_none():
    gpus = parse_nvidia_smi(recorded("4gpu_l40s.csv"))
    assert (gpus[1].memory_total_mb, gpus[1].memory_used_mb, gpus[1].utilization_pct) == (46068, 38211, 97)
    assert gpus[3].utilization_pct is None and gpus[3].is_idle()
    assert gpus[1].to_dict()["name"] == "NVIDIA L40S"


def test_thresholds_are_parameters():
    gpus = parse_nvidia_smi(recorded("8gpu_h100.csv"))
    assert free_indices(gpus, max_used_mb=4096, max_util_pct=50) == [0, 1, 4, 5, 6, 7]
    assert free_indices(gpus, max_used_mb=0, max_util_pct=0) == []


def test_names_with_commas_and_unsorted_lines():
    gpus = parse_nvidia_smi("1, Tesla V100, PCIe 16GB, 16160, 0, 0\n0, Tesla T4, 15360, 3, 1\n\n")
    assert [(g.index, g.name) for g in gpus] == [(0, "Tesla T4"), (1, "Tesla V100, PCIe 16GB")]


def test_no_gpu_is_an_empty_list():
    assert parse_nvidia_smi("") == [] and parse_nvidia_smi("\n  \n") == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("malformed_header_units.csv", "line 1: index is not a number: 'index'"),
        ("malformed_truncated.csv", "line 2: expected 5 fields, got 3"),
        ("malformed_no_driver.csv", "line 1: expected 5 fields, got 1"),
        ("malformed_used_over_total.csv", "line 1: impossible values"),
    ],
)
def test_malformed_output_is_refused_with_the_line(name, expected):
    with pytest.raises(GpuParseError, match="nvidia-smi") as info:
        parse_nvidia_smi(recorded(name))
    assert expected in str(info.value)


def test_units_left_in_are_refused():
    with pytest.raises(GpuParseError, match="memory.total is not a number: '81920 MiB'"):
        parse_nvidia_smi("0, NVIDIA A100-SXM4-80GB, 81920 MiB, 4 MiB, 0 %\n")


def test_a_gpu_listed_twice_is_refused():
    with pytest.raises(GpuParseError, match="index twice"):
        parse_nvidia_smi("0, A, 100, 1, 0\n0, A, 100, 1, 0\n")
