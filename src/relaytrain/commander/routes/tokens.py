"""``/api/v1/tokens``: create, list and revoke API tokens (admin scope). Only a token's hash is
kept; the plain token is in the creation's answer only, and a list never shows it. A revoked token
is refused by each commander within its authentication cache time (30 s:
:data:`relaytrain.api.models.TOKEN_CACHE_S`); an expired one at once."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from relaytrain.api import models as m
from relaytrain.errors import NotFound

from .deps import ADMIN, AUTHED, BODY, StoreDep, call, errors

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"], dependencies=[ADMIN])
TokenIdPath = Annotated[int, Path(ge=1, le=2**62, description="The token's id (relay token list).")]


@router.post("", response_model=m.TokenCreated, responses=errors(*AUTHED, *BODY))
async def create_token(req: m.TokenCreate, store: StoreDep) -> dict[str, Any]:
    """A new token of ``scope``, refused ``expires_in_s`` seconds from now (none: never); the plain
    token is in this answer only."""
    return await call(store.issue_token, req.name, req.scope, expires_in_s=req.expires_in_s)


@router.get("", response_model=list[m.TokenInfo], responses=errors(*AUTHED))
async def list_tokens(store: StoreDep) -> list[dict[str, Any]]:
    """Every token, revoked and expired ones too, oldest first; never a token or its hash."""
    return await call(store.list_tokens)


@router.post("/{token_id}/revoke", response_model=m.TokenInfo, responses=errors(*AUTHED, NotFound))
async def revoke_token(token_id: TokenIdPath, store: StoreDep) -> dict[str, Any]:
    """Revoke a token (again: no change). Commanders refuse it within their cache time (30 s)."""
    return await call(store.revoke_token, token_id)
