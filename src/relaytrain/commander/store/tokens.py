"""API tokens: only their sha256 is stored. Functions of an open connection."""

from __future__ import annotations

import hashlib
import secrets

import sqlalchemy as sa

from .schema import tokens


def hash_token(token: str) -> str:
    """Tokens are random and long, so a plain sha256 is a safe way to store them."""
    return hashlib.sha256(token.encode()).hexdigest()


def create(conn: sa.Connection, name: str, scope: str, now: float) -> str:
    """A new random token; only its hash is kept. The plain token is returned once."""
    token = f"relay_{scope[0]}_{secrets.token_urlsafe(32)}"
    conn.execute(tokens.insert().values(name=name, scope=scope, token_hash=hash_token(token), created_at=now))
    return token


def scope_by_hash(conn: sa.Connection, token_hash: str) -> str | None:
    """The scope of the live token whose sha256 is ``token_hash``, or None."""
    return conn.execute(
        sa.select(tokens.c.scope).where(tokens.c.token_hash == token_hash, tokens.c.revoked_at.is_(None))
    ).scalar()
