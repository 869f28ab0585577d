"""Data parallelism for the built-in trainers: the process group, DDP or FSDP2, and the collectives a step needs.

A built-in trainer started by torchrun (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT`` in its environment) with ``WORLD_SIZE`` > 1 joins a process group (``nccl`` on
CUDA, ``gloo`` on CPU, or ``trainer.distributed.backend``) and wraps its model: DDP replicates it,
FSDP2 (``fully_shard``) shards every transformer block (the classes the model names in
``_no_split_modules``) and then the root, which keeps tied embeddings in one group. One process
(no ``WORLD_SIZE``, or 1) gets a ``DistContext`` whose collectives are identities, so the trainers
call the same code whatever the world size.

The global batch is the config's whatever the world size: every rank's data cursor yields the
same global indices (same seed), rank ``r`` takes rows ``r::N`` of each micro-batch
(``shard``), the loss is normalised by the global target-token count and multiplied by N
(``loss_scale``) to undo the gradients' averaging across ranks, and gradients are synchronised on
the last micro-batch only (``grad_sync``).

Usage::

    dist = setup(plan_for(config), device)      # init_process_group when WORLD_SIZE > 1
    train_model = dist.wrap(model)              # DDP(model), fully_shard(model) or model
    optimizer = make_optimizer(model, ...)      # after wrap: FSDP2 replaces the parameters
    for last, rows in ...:
        with dist.grad_sync(train_model, last):
            (loss * dist.loss_scale).backward()
    loss, tokens = dist.all_sum([loss, tokens])
    if dist.any_rank(contract.should_stop()): ...
    dist.close()

Rank 0 alone reports (the rank-aware ``Contract`` sees to that), commits checkpoints and opens the
trackers.

Public API: ``DistContext``, ``setup``, ``clip_grad_norm``, ``is_sharded``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from relaytrain.config.distributed import DistributedPlan
from relaytrain.errors import ConfigError

log = logging.getLogger(__name__)

SINGLE = "single"
"""The strategy of a one-process run."""


@dataclass
class DistContext:
    """Where this process stands: its rank among ``world_size``, the strategy, its device."""

    rank: int
    world_size: int
    local_rank: int
    strategy: str
    """``single``, ``ddp`` or ``fsdp``."""
    device: Any

    @property
    def enabled(self) -> bool:
        """More than one rank (a process group is up)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that reports progress and commits checkpoints."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """FSDP: each rank holds only its shard of the weights and optimizer state."""
        return self.enabled and self.strategy == "fsdp"

    @property
    def loss_scale(self) -> float:
        """What a rank multiplies its loss by (N): its gradient is averaged with N-1 others'."""
        return float(self.world_size)

    def check_divisible(self, value: int, field: str) -> None:
        """``ConfigError`` naming ``field`` unless ``value`` splits evenly among the ranks."""
        if value % self.world_size:
            raise ConfigError(f"{field}: {value} is not divisible by the {self.world_size} ranks of "
                              f"trainer.distributed; the global batch is split evenly among them")

    def shard(self, items: Sequence[Any]) -> list[Any]:
        """This rank's share of a global micro-batch: items ``rank::world_size``."""
        return list(items[self.rank :: self.world_size])

    def wrap(self, model: Any) -> Any:
        """The module to run forward/backward on: ``model`` itself (one process, and FSDP2, which
        shards it in place), or a DDP wrapper sharing ``model``'s parameters."""
        if not self.enabled:
            return model
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(model, device_ids=ids)
        from torch.distributed.fsdp import fully_shard

        blocks = set(getattr(model, "_no_split_modules", None) or ())
        shard_count = 0
        for module in model.modules():
            if module is not model and type(module).__name__ in blocks:
                fully_shard(module)
                shard_count += 1
        fully_shard(model)
        log.info("FSDP2: %d blocks sharded over %d ranks", shard_count, self.world_size)
        return model

    @contextlib.contextmanager
    def grad_sync(self, train_model: Any, sync: bool) -> Iterator[None]:
        """Backward passes inside synchronise gradients across ranks only when ``sync`` (the
        last micro-batch of a step); the others accumulate locally (DDP ``no_sync``, FSDP2
        ``set_requires_gradient_sync``)."""
        if not self.enabled or sync and self.strategy == "ddp":
            yield
            return
        if self.strategy == "ddp":
            with train_model.no_sync():
                yield
            return
        train_model.set_requires_gradient_sync(sync)
        try:
            yield
        finally:
            train_model.set_requires_gradient_sync(True)

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Each of ``values`` summed over the ranks (float64), on every rank."""
        if not self.enabled:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (all-reduce MAX): every rank stops at
        the same step when one sees the stop file or a SIGTERM."""
        if not self.enabled:
            return bool(flag)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object), on every rank."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait until every rank is here."""
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Leave the process group (when this process joined one)."""
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected an integer from torchrun, got {raw!r}") from None


def setup(plan: DistributedPlan, device_name: str | None = None) -> DistContext:
    """This process's ``DistContext``: joins the process group when torchrun started more than one
    rank (``WORLD_SIZE`` > 1); the device is ``cuda:LOCAL_RANK`` on GPUs, else ``device_name`` or
    the default (``session.pick_device``)."""
    import torch

    from relaytrain.train.session import pick_device

    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world_size <= 1:
        return DistContext(0, 1, 0, SINGLE, pick_device(device_name))
    if device_name is None and torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = pick_device(device_name or "cpu")
    backend = plan.backend if plan.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    log.info("rank %d of %d (%s, %s on %s)", rank, world_size, plan.strategy, backend, device)
    return DistContext(rank, world_size, local_rank, plan.strategy, device)


def clip_grad_norm(params: Sequence[Any], max_norm: float) -> float:
    """Clip the gradients of ``params`` to the global norm ``max_norm``; return that norm.

    DDP gradients are all-reduced already, so their norm is global; FSDP2's are DTensor shards,
    whose norm ``clip_grad_norm_`` reduces across ranks (a replicated DTensor)."""
    import torch

    norm = torch.nn.utils.clip_grad_norm_(list(params), max_norm)
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)


def is_sharded(model: Any) -> bool:
    """Whether ``model``'s parameters are FSDP2 shards (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())
