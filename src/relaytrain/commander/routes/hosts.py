"""``/api/v1/hosts``: the SSH machines the commander polls for GPUs and where its autoscaler
starts workers (DESIGN §10). Changing them: admin scope; listing and reading: viewer scope."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from relaytrain.api.hosts import HostInfo, HostPatch, HostRemoved, HostSpec
from relaytrain.errors import InvalidState, NotFound

from .deps import ADMIN, AUTHED, BODY, READ, HostNamePath, StoreDep, call, errors

router = APIRouter(prefix="/api/v1/hosts", tags=["hosts"])


def _info(host: dict[str, Any]) -> dict[str, Any]:
    return {**{k: v for k, v in host.items() if k != "assignments"}, "workers": host["assignments"]}


@router.get("", response_model=list[HostInfo], dependencies=[READ], responses=errors(*AUTHED))
async def list_hosts(store: StoreDep) -> list[dict[str, Any]]:
    return [_info(h) for h in await call(store.list_hosts)]


@router.get("/{name}", response_model=HostInfo, dependencies=[READ], responses=errors(*AUTHED, NotFound))
async def get_host(name: HostNamePath, store: StoreDep) -> dict[str, Any]:
    return _info(await call(store.get_host, name))


@router.put("/{name}", response_model=HostInfo, dependencies=[ADMIN], responses=errors(*AUTHED, *BODY))
async def put_host(name: HostNamePath, spec: HostSpec, store: StoreDep) -> dict[str, Any]:
    """Add a host, or change how it is reached (its last poll and its workers are kept)."""
    return _info(await call(store.put_host, name, spec.model_dump()))


@router.patch("/{name}", response_model=HostInfo, dependencies=[ADMIN], responses=errors(*AUTHED, NotFound, *BODY))
async def patch_host(name: HostNamePath, patch: HostPatch, store: StoreDep) -> dict[str, Any]:
    return _info(await call(store.set_host_enabled, name, patch.enabled))


@router.delete("/{name}", response_model=HostRemoved, dependencies=[ADMIN],
               responses=errors(*AUTHED, NotFound, InvalidState))
async def remove_host(
    name: HostNamePath,
    store: StoreDep,
    force: Annotated[bool, Query(description="Forget it even while workers started there live.")] = False,
) -> dict[str, Any]:
    """409 while workers the autoscaler started there live, unless ``force``."""
    await call(store.remove_host, name, force=force)
    return {"name": name, "removed": True}
