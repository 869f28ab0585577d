"""The goodput and cost ledger (DESIGN §7), per run and per provider (viewer scope)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from relaytrain.api import models as m
from relaytrain.errors import NotFound

from .deps import AUTHED, READ, RunIdPath, StoreDep, call, errors

router = APIRouter(tags=["ledger"], dependencies=[READ])


@router.get("/api/v1/runs/{run_id}/ledger", response_model=m.RunLedger, responses=errors(*AUTHED, NotFound))
async def run_ledger(run_id: RunIdPath, store: StoreDep) -> dict[str, Any]:
    return await call(store.run_ledger, run_id)


@router.get("/api/v1/ledger", response_model=m.ProviderLedger, responses=errors(*AUTHED))
async def provider_ledger(store: StoreDep) -> dict[str, Any]:
    return await call(store.provider_ledger)
