"""Reading ``nvidia-smi`` output: which GPUs a machine has and which of them are free.

The GPU poller runs :data:`NVIDIA_SMI_QUERY` on every host over SSH and parses the answer
with :func:`parse_nvidia_smi`; a GPU is free when it is nearly idle (:func:`free_indices`)
and no worker relaytrain started there holds it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from relaytrain.errors import RelayError

NVIDIA_SMI_QUERY = (
    "nvidia-smi --query-gpu=index,name,memory.total,memory.used,utilization.gpu --format=csv,noheader,nounits"
)
FREE_MEMORY_USED_MB = 1024
FREE_UTILIZATION_PCT = 10


class GpuParseError(RelayError):
    """nvidia-smi printed something that is not the expected CSV."""


@dataclass(frozen=True)
class GpuStatus:
    """One GPU as nvidia-smi reports it. ``utilization_pct`` is None when the driver says [N/A]."""

    index: int
    name: str
    memory_total_mb: int
    memory_used_mb: int
    utilization_pct: int | None

    def is_idle(self, *, max_used_mb: int = FREE_MEMORY_USED_MB, max_util_pct: int = FREE_UTILIZATION_PCT) -> bool:
        """Nearly no memory in use and (where reported) nearly no utilisation."""
        return self.memory_used_mb <= max_used_mb and (self.utilization_pct or 0) <= max_util_pct

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(field: str, value: str, line_no: int, *, optional: bool = False) -> int | None:
    value = value.strip()
    if optional and value.strip("[]").lower() in ("n/a", "not supported"):
        return None
    try:
        return int(float(value))
    except ValueError:
        raise GpuParseError(f"nvidia-smi line {line_no}: {field} is not a number: {value!r}") from None


def parse_nvidia_smi(text: str) -> list[GpuStatus]:
    """Parse the CSV of :data:`NVIDIA_SMI_QUERY` (one GPU a line); GpuParseError on anything else.

    GPU names may contain commas, so the name is everything between the first and the last
    three fields.
    """
    gpus: list[GpuStatus] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.count(",") + 1
        if fields < 5:
            raise GpuParseError(f"nvidia-smi line {line_no}: expected 5 fields, got {fields}: {line.strip()!r}")
        first, rest = line.split(",", 1)
        middle, *numbers = rest.rsplit(",", 3)
        parts = [first, *numbers]
        index = _number("index", first, line_no)
        name = middle.strip()
        if not name:
            raise GpuParseError(f"nvidia-smi line {line_no}: empty GPU name")
        total = _number("memory.total", parts[1], line_no)
        used = _number("memory.used", parts[2], line_no)
        util = _number("utilization.gpu", parts[3], line_no, optional=True)
        assert index is not None and total is not None and used is not None
        if index < 0 or total < 0 or used < 0 or used > total:
            raise GpuParseError(f"nvidia-smi line {line_no}: impossible values: {line.strip()!r}")
        gpus.append(GpuStatus(index=index, name=name, memory_total_mb=total, memory_used_mb=used,
                              utilization_pct=util))
    indices = [g.index for g in gpus]
    if len(indices) != len(set(indices)):
        raise GpuParseError(f"nvidia-smi listed a GPU index twice: {indices}")
    return sorted(gpus, key=lambda g: g.index)


def free_indices(gpus: list[GpuStatus], *, max_used_mb: int = FREE_MEMORY_USED_MB,
                 max_util_pct: int = FREE_UTILIZATION_PCT) -> list[int]:
    """Indices of the GPUs that are idle enough to start a worker on."""
    return [g.index for g in gpus if g.is_idle(max_used_mb=max_used_mb, max_util_pct=max_util_pct)]
