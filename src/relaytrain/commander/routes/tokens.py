"""``/api/v1/tokens``: create API tokens (admin scope); only their hash is kept."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from relaytrain.api import models as m

from .deps import ADMIN, AUTHED, BODY, StoreDep, call, errors

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"], dependencies=[ADMIN])


@router.post("", response_model=m.TokenCreated, responses=errors(*AUTHED, *BODY))
async def create_token(req: m.TokenCreate, store: StoreDep) -> dict[str, Any]:
    """A new token of ``scope``; the plain token is in this answer only."""
    token = await call(store.create_token, req.name, req.scope)
    return {"name": req.name, "scope": req.scope, "token": token}
