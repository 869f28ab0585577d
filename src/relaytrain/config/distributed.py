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
        description="Processes (ranks) on the worker; 0: what the worker offers (its --nproc-per-node, else one "
        "per GPU it sees), so a run handed to a machine with fewer GPUs goes on with fewer ranks.")
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


def plan_for(config: Any, offered: int | None = None) -> DistributedPlan:
    """The plan of a built-in run config (anything with ``trainer`` and ``resources``).

    ``trainer.distributed.nproc_per_node`` when set; otherwise a run with ``trainer.distributed``
    or ``resources.gpus`` above 1 takes the ranks the worker ``offered`` (its ``--nproc-per-node``,
    else one per GPU it sees; None: unknown here, then ``resources.gpus``), so a run handed from an
    8-GPU machine to a 4-GPU one trains on 4 ranks; any other run has one rank. ``resources.gpus``
    is a minimum: the commander grants the run only to workers with that many GPUs."""
    distributed: DistributedConfig | None = getattr(config.trainer, "distributed", None)
    gpus = int(getattr(config.resources, "gpus", 0) or 0)
    if distributed is not None and distributed.nproc_per_node:
        return DistributedPlan(distributed.nproc_per_node, distributed.strategy, distributed.backend)
    if distributed is None and gpus <= 1:
        return DistributedPlan(1, "ddp", "auto")
    world = max(1, offered if offered is not None else gpus)
    if distributed is None:
        return DistributedPlan(world, "ddp", "auto")
    return DistributedPlan(world, distributed.strategy, distributed.backend)
