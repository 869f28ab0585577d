"""API tokens: only their sha256 is stored. Functions of an open connection.

A token is live until it is revoked or its ``expires_at`` passes (none: never expires). Its
``last_used_at`` is written at most once every :data:`LAST_USED_EVERY_S` per token, never on every
request: the authenticator reads a token from the database only when its cache misses, and only a
read that finds the recorded use older than that writes it again.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import sqlalchemy as sa

from relaytrain.errors import NotFound

from .schema import tokens

LAST_USED_EVERY_S = 60.0
"""``last_used_at`` is as fresh as this (plus the authenticator's cache time)."""
_SHOWN = (tokens.c.id, tokens.c.name, tokens.c.scope, tokens.c.created_at, tokens.c.expires_at,
          tokens.c.revoked_at, tokens.c.last_used_at)
"""What a token's record shows: never its hash."""


def hash_token(token: str) -> str:
    """Tokens are random and long, so a plain sha256 is a safe way to store them."""
    return hashlib.sha256(token.encode()).hexdigest()


def create(conn: sa.Connection, name: str, scope: str, now: float,
           expires_in_s: float | None = None) -> tuple[dict[str, Any], str]:
    """A new random token; only its hash is kept. Returns its record and the plain token (once)."""
    token = f"relay_{scope[0]}_{secrets.token_urlsafe(32)}"
    expires_at = None if expires_in_s is None else now + expires_in_s
    inserted = conn.execute(tokens.insert().values(name=name, scope=scope, token_hash=hash_token(token),
                                                   created_at=now, expires_at=expires_at))
    return get(conn, inserted.inserted_primary_key[0]), token


def get(conn: sa.Connection, token_id: int) -> dict[str, Any]:
    row = conn.execute(sa.select(*_SHOWN).where(tokens.c.id == token_id)).mappings().first()
    if row is None:
        raise NotFound(f"no token with id {token_id}")
    return dict(row)


def list_all(conn: sa.Connection) -> list[dict[str, Any]]:
    """Every token, revoked and expired ones too, oldest first."""
    return [dict(r) for r in conn.execute(sa.select(*_SHOWN).order_by(tokens.c.id)).mappings()]


def revoke(conn: sa.Connection, token_id: int, now: float) -> dict[str, Any]:
    """Revoke a token (a token already revoked keeps its first ``revoked_at``). NotFound if none."""
    conn.execute(sa.update(tokens).where(tokens.c.id == token_id, tokens.c.revoked_at.is_(None))
                 .values(revoked_at=now))
    return get(conn, token_id)


def by_hash(conn: sa.Connection, token_hash: str) -> dict[str, Any] | None:
    """The record of the token whose sha256 is ``token_hash`` (revoked and expired ones too), or None."""
    row = conn.execute(sa.select(*_SHOWN).where(tokens.c.token_hash == token_hash)).mappings().first()
    return None if row is None else dict(row)


def is_live(token: dict[str, Any], now: float) -> bool:
    return token["revoked_at"] is None and (token["expires_at"] is None or now < token["expires_at"])


def needs_use_recorded(token: dict[str, Any], now: float) -> bool:
    """Whether a use at ``now`` of this live token is to be written (the last is old enough)."""
    last = token["last_used_at"]
    return last is None or now - last >= LAST_USED_EVERY_S


def record_use(conn: sa.Connection, token_id: int, now: float) -> None:
    """Write ``last_used_at`` unless another request (or replica) wrote it in the last
    :data:`LAST_USED_EVERY_S`: the condition is in the statement, so racing writers write once."""
    conn.execute(sa.update(tokens).where(
        tokens.c.id == token_id,
        sa.or_(tokens.c.last_used_at.is_(None), tokens.c.last_used_at <= now - LAST_USED_EVERY_S),
    ).values(last_used_at=now))
