"""How a built-in trainer spreads over the processes of one worker (``trainer.distributed``).

A run with ``resources: {gpus: N}`` (N > 1), or with ``trainer.distributed``, is trained by
``world_size`` processes started under torchrun on one worker (docs/scaling.md): DDP
replicates the model, FSDP2 (``fully_shard``) shards it. The global batch is the config's
whatever the world size: each rank takes its share of every micro-batch. Torch-free.

Public API: ``DistributedConfig``, ``Strategy``, ``STRATEGIES``, ``DistributedPlan``, ``plan_for``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from ._base import _Model

Strategy = Literal["ddp", "fsdp"]
STRATEGIES: tuple[str, ...] = ("ddp", "fsdp")
Backend = Literal["auto", "nccl", "gloo"]


class DistributedConfig(_Model):
    """Data-parallel training on several processes of one worker."""

    strategy: Strategy = Field("ddp", description="'ddp' (replicated model) or 'fsdp' (FSDP2, sharded model).")
    nproc_per_node: int = Field(
        0, ge=0, le=64,
        description="Processes (ranks) on the worker; 0: one per GPU the run asks for (resources.gpus), at least 1.")
    backend: Backend = Field("auto", description="'nccl' on GPUs, 'gloo' on CPUs; 'auto' picks by device.")


@dataclass(frozen=True)
class DistributedPlan:
    """What a run's config asks for: ``world_size`` ranks with ``strategy``."""

    world_size: int
    strategy: str
    backend: str

    @property
    def distributed(self) -> bool:
        """More than one rank: the trainer is started under torchrun."""
        return self.world_size > 1


def plan_for(config: Any) -> DistributedPlan:
    """The plan of a built-in run config (anything with ``trainer`` and ``resources``):
    ``trainer.distributed.nproc_per_node`` when set, else ``resources.gpus`` when above 1
    (DDP), else one rank."""
    distributed: DistributedConfig | None = getattr(config.trainer, "distributed", None)
    gpus = int(getattr(config.resources, "gpus", 0) or 0)
    if distributed is None:
        return DistributedPlan(max(1, gpus), "ddp", "auto")
    world = distributed.nproc_per_node or max(1, gpus)
    return DistributedPlan(world, distributed.strategy, distributed.backend)
