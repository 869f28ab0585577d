"""The hosts endpoints (``/api/v1/hosts``, admin scope): the SSH machines the commander polls for
GPUs and where its autoscaler starts workers. Mounted with
``app.include_router(make_router(store, Admin))``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from relaytrain.config import HOST_NAME_PATTERN

from .store import Store

HostNamePath = Annotated[str, Path(pattern=HOST_NAME_PATTERN, max_length=64, description="The host's name.")]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HostSpec(_Wire):
    """How to reach a host and what its workers offer (``relay hosts add``)."""

    address: str = Field(..., min_length=1, max_length=255, description="IP address or DNS name.")
    port: int = Field(22, ge=1, le=65535, description="SSH port.")
    user: str = Field("root", min_length=1, max_length=64, description="SSH user.")
    key_path: str = Field(..., min_length=1, max_length=4096, description="Private key, on the commander's machine.")
    known_hosts: str | None = Field(None, max_length=4096, description="known_hosts file; unset: key unchecked.")
    labels: dict[str, str] = Field(default_factory=dict, max_length=64, description="Labels of its workers.")
    price_per_hour: float | None = Field(None, ge=0, description="What the machine costs, $/hour.")
    python: str = Field("python3", min_length=1, max_length=4096, description="Python with relaytrain, on the host.")
    workdir: str = Field("relay", min_length=1, max_length=4096, description="Folder for workers (relative: home).")


class HostPatch(_Wire):
    enabled: bool = Field(..., description="False: still polled, but the autoscaler starts nothing there.")


class GpuState(_Wire):
    index: int
    name: str
    memory_total_mb: int
    memory_used_mb: int
    utilization_pct: int | None
    idle: bool


class HostWorker(BaseModel):
    """A worker the autoscaler started on the host, and the GPUs it holds."""

    model_config = ConfigDict(extra="ignore")
    worker_id: str
    gpus: list[int]
    pid: int | None = None
    run_id: str | None = None
    reserved_at: float
    started_at: float | None = None
    dir: str | None = None
    log_path: str | None = None
    pid_path: str | None = None
    config_path: str | None = None
    workdir: str | None = None


class HostInfo(HostSpec):
    name: str
    enabled: bool
    reachable: bool | None = Field(..., description="At the last poll; None before the first.")
    last_error: str | None
    polled_at: float | None
    gpus: list[GpuState]
    free_gpus: list[int] = Field(..., description="Idle at the last poll and held by no worker.")
    workers: list[HostWorker]
    created_at: float
    updated_at: float


def _info(host: dict[str, Any]) -> dict[str, Any]:
    return {**{k: v for k, v in host.items() if k != "assignments"}, "workers": host["assignments"]}


def make_router(store: Store, admin_dependency: Any) -> APIRouter:
    """The hosts endpoints over ``store`` (a Store with the HostsMixin), each behind ``admin_dependency``."""
    router = APIRouter(prefix="/api/v1/hosts", tags=["hosts"], dependencies=[admin_dependency])

    @router.get("", response_model=list[HostInfo])
    async def list_hosts() -> list[dict[str, Any]]:
        return [_info(h) for h in await run_in_threadpool(store.list_hosts)]

    @router.get("/{name}", response_model=HostInfo)
    async def get_host(name: HostNamePath) -> dict[str, Any]:
        return _info(await run_in_threadpool(store.get_host, name))

    @router.put("/{name}", response_model=HostInfo)
    async def put_host(name: HostNamePath, spec: HostSpec) -> dict[str, Any]:
        return _info(await run_in_threadpool(store.put_host, name, spec.model_dump()))

    @router.patch("/{name}", response_model=HostInfo)
    async def patch_host(name: HostNamePath, patch: HostPatch) -> dict[str, Any]:
        return _info(await run_in_threadpool(store.set_host_enabled, name, patch.enabled))

    @router.delete("/{name}")
    async def remove_host(
        name: HostNamePath,
        force: Annotated[bool, Query(description="Forget it even while workers started there live.")] = False,
    ) -> dict[str, Any]:
        await run_in_threadpool(store.remove_host, name, force=force)
        return {"name": name, "removed": True}

    return router
