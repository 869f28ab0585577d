"""What this machine offers: its GPUs through NVML (none on a machine without a driver)."""

from __future__ import annotations

import logging
import os

from relaytrain.api.models import GpuInfo

log = logging.getLogger(__name__)


def gpu_inventory() -> list[GpuInfo]:
    """The GPUs NVML sees, restricted to ``CUDA_VISIBLE_DEVICES`` when it lists indices."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.debug("no NVML (%s): no GPUs", exc)
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024)
            gpus.append(GpuInfo(index=index, name=name if isinstance(name, str) else name.decode(),
                                memory_mb=int(memory), uuid=uuid if isinstance(uuid, str) else uuid.decode()))
    finally:
        pynvml.nvmlShutdown()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and all(part.strip().isdigit() for part in visible.split(",") if part.strip()):
        wanted = {int(part) for part in visible.split(",") if part.strip()}
        gpus = [g for g in gpus if g.index in wanted]
    return gpus
