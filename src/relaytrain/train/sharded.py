"""Checkpoints of data-parallel training, and loading any checkpoint into any world size.

A DDP run's state is replicated: rank 0 saves the single-process format (``model/model.safetensors``,
``optimizer.pt``, …) exactly as one process does, the other ranks wait. An FSDP run's is sharded:
every rank writes its shards with ``torch.distributed.checkpoint`` (DCP; FQN-keyed model and
optimizer from ``get_state_dict``) into ``dcp/`` inside the checkpoint's staging folder, which
rank 0 creates (``CheckpointManager.stage``) and broadcasts; after DCP's own collective finish and
a barrier, rank 0 adds the rest (tokenizer and configs under ``model/``, scheduler,
``trainer_state.json`` with ``"sharded": {"strategy": "fsdp", "world_size": N}``), hashes every
file into the manifest and commits once (``CheckpointManager.commit_staged``)::

    step_00000010/
      dcp/.metadata  dcp/__0_0.distcp  dcp/__1_0.distcp   every rank's shards (DCP)
      model/config.json  model/tokenizer.json  …           no weights: they are in dcp/
      scheduler.pt  trainer_state.json  manifest.json

Loading (``load_weights_and_optimizer``) takes either format into a model of any world size:
DCP reshards on read (N → M ranks, or one process with no process group); a single-format
checkpoint is loaded whole and, when the model is sharded, distributed with
``set_model_state_dict(full_state_dict=True)`` (its index-keyed ``optimizer.pt`` turned into
FQN keys by the order of the trainable parameters, the order ``make_optimizer`` used).

Public API: ``DCP_DIR``, ``is_shard_file``, ``save_checkpoint``, ``load_weights_and_optimizer``,
``load_dcp``, ``fqn_optimizer_state``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from relaytrain.errors import CheckpointError

log = logging.getLogger(__name__)

DCP_DIR = "dcp"
"""The folder of a checkpoint holding DCP's shard files and its ``.metadata``."""


def is_shard_file(name: str) -> bool:
    """Whether the checkpoint file ``name`` belongs to the DCP shards (read by DCP, not by us)."""
    return name.startswith(f"{DCP_DIR}/")


def save_checkpoint(session: Any, manager: Any, kind: str, counters: dict[str, Any], *,
                    extra_files: dict[str, Any] | None = None, epoch: int | None = None,
                    metadata: Mapping[str, Any] | None = None) -> None:
    """Checkpoint ``session`` at its step, from every rank (a collective call).

    One process and DDP: rank 0 saves the usual entries through ``manager`` (None on other
    ranks), then all meet at a barrier. FSDP: the DCP shards from every rank, then rank 0
    commits (module docstring). An error on rank 0 is raised on every rank."""
    from relaytrain.train.session import checkpoint_entries

    dist = session.dist
    if not dist.sharded:
        if dist.is_main:
            entries = checkpoint_entries(session, kind, counters, extra_files)
            manager.save(entries, session.step, epoch=epoch, metadata=metadata)
        dist.barrier()
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    staged: tuple[str | None, str | None] = (None, None)
    if dist.is_main:
        try:
            staged = (str(manager.stage(session.step)), None)
        except Exception as exc:
            staged = (None, f"{type(exc).__name__}: {exc}")
    tmp_name, error = dist.broadcast(staged)
    if tmp_name is None:
        raise CheckpointError(f"saving step {session.step}: rank 0 could not stage it: {error}")
    tmp = Path(tmp_name)
    model_state, optimizer_state = get_state_dict(session.model, session.optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=tmp / DCP_DIR)
    dist.barrier()  # every rank's files are written (DCP's finish ran on rank 0 after all wrote)
    error = None
    if dist.is_main:
        sharded = {"strategy": dist.strategy, "world_size": dist.world_size}
        try:
            entries = checkpoint_entries(session, kind, counters, extra_files, sharded=sharded)
            manager.commit_staged(tmp, entries, session.step, epoch=epoch, metadata=metadata)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
    error = dist.broadcast(error)
    if error is not None:
        raise CheckpointError(f"saving step {session.step} failed on rank 0: {error}")


def load_weights_and_optimizer(model: Any, optimizer: Any, folder: Path, loaded: Mapping[str, Any],
                               optimizer_state: Any) -> None:
    """Put the weights and optimizer state of a verified checkpoint (``session.load_verified``)
    into ``model`` and ``optimizer``, whatever the world size of either.

    ``optimizer_state``: the content of ``optimizer.pt`` (moved to the device) for a
    single-format checkpoint; unused for a sharded one."""
    from relaytrain.train.distributed import is_sharded
    from relaytrain.train.model_io import load_model_weights, weights_entry

    state = loaded["trainer_state.json"]
    if state.get("sharded"):
        load_dcp(model, optimizer, folder / DCP_DIR)
        return
    entry = weights_entry(model)
    if entry not in loaded:
        raise CheckpointError(f"{folder}: no {entry}")
    if not is_sharded(model):
        load_model_weights(model, loaded[entry], f"{folder}/{entry}")
        optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    tensors = with_tied(model, loaded[entry], f"{folder}/{entry}")
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, tensors, options=options)
    set_optimizer_state_dict(model, optimizer, fqn_optimizer_state(model, optimizer_state), options=options)


def load_dcp(model: Any, optimizer: Any | None, path: Path) -> None:
    """Load DCP shards at ``path`` into ``model`` (and ``optimizer``), resharded to this process
    group's layout, or whole into one process when there is no process group."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not path.is_dir():
        raise CheckpointError(f"{path}: a sharded checkpoint without its {DCP_DIR}/ folder")
    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        state = {"model": get_model_state_dict(model)}
        _dcp_load(dcp, state, path)
        set_model_state_dict(model, state["model"])
        return
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    _dcp_load(dcp, state, path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def _dcp_load(dcp: Any, state: dict[str, Any], path: Path) -> None:
    import warnings

    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message=".*load in a single process.*")
        try:
            dcp.load(state, checkpoint_id=path)
        except Exception as exc:  # DCP raises CheckpointException (and others) for missing keys, shapes
            raise CheckpointError(f"{path}: the sharded state does not fit this model: {exc}") from exc


def with_tied(model: Any, tensors: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``tensors`` (a full-weights file, where tied duplicates are left out) completed with the
    tied names ``model`` has (``lm_head.weight`` = ``model.embed_tokens.weight``)."""
    out = dict(tensors)
    names_of: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
    for names in names_of.values():
        present = [n for n in names if n in out]
        for name in names:
            if name not in out and present:
                out[name] = out[present[0]]
    missing = [n for n, _ in model.named_parameters() if n not in out]
    if missing:
        raise CheckpointError(f"{where}: weights do not match the model (missing {sorted(missing)[:5]})")
    return out


def fqn_optimizer_state(model: Any, state: Mapping[str, Any]) -> dict[str, Any]:
    """An index-keyed ``optimizer.state_dict()`` (one process, DDP) with parameter names for
    indices: the names of ``model``'s trainable parameters, in the order ``make_optimizer``
    gave them to the optimizer."""
    names = [name for name, param in model.named_parameters() if param.requires_grad]
    try:
        return {
            "state": {names[int(index)]: value for index, value in state["state"].items()},
            "param_groups": [{**group, "params": [names[int(i)] for i in group["params"]]}
                             for group in state["param_groups"]],
        }
    except (IndexError, KeyError, TypeError) as exc:
        raise CheckpointError(f"optimizer.pt does not match the model's {len(names)} trainable "
                              f"parameters: {exc!r}") from exc
