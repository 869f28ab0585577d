"""Bearer-token authentication: one admin token given at start, worker tokens kept hashed."""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING

from relaytrain.errors import AuthError, Forbidden

if TYPE_CHECKING:
    from .store import Store

SCOPES = ("admin", "worker")


class Authenticator:
    """Decides who a request is. With no admin token configured, every request is admitted
    (``relay serve`` allows that only on a loopback address)."""

    def __init__(self, store: Store, admin_token: str | None, *, cache_s: float = 10.0) -> None:
        self.store = store
        self.admin_token = admin_token
        self.cache_s = cache_s
        self._cache: dict[str, tuple[str | None, float]] = {}

    @property
    def enabled(self) -> bool:
        return self.admin_token is not None

    def scope_of(self, authorization: str | None) -> str:
        """The scope of the request's bearer token; AuthError when missing or unknown."""
        if not self.enabled:
            return "admin"
        if not authorization or not authorization.lower().startswith("bearer "):
            raise AuthError("missing bearer token: send 'Authorization: Bearer <token>'")
        token = authorization[7:].strip()
        if hmac.compare_digest(token.encode(), self.admin_token.encode()):  # type: ignore[union-attr]
            return "admin"
        scope = self._lookup(token)
        if scope is None:
            raise AuthError("unknown or revoked token")
        return scope

    def require(self, authorization: str | None, scope: str) -> str:
        """Admit the request if its token reaches ``scope`` (admin reaches everything)."""
        have = self.scope_of(authorization)
        if have != "admin" and have != scope:
            raise Forbidden(f"a {have} token cannot reach this endpoint (needs {scope})")
        return have

    def _lookup(self, token: str) -> str | None:
        now = time.monotonic()
        cached = self._cache.get(token)
        if cached is not None and cached[1] > now:
            return cached[0]
        scope = self.store.token_scope(token)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = (scope, now + self.cache_s)
        return scope
