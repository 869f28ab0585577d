"""Bearer-token authentication: one admin token given at start, worker and rollout tokens kept
hashed. A token reaches the endpoints of its own scope; the admin token reaches every endpoint.

A worker token's scope is cached in-process by the token's sha256 for ``cache_s`` (30 s) from
the moment it was read, so a token revoked or deleted in the database stops working within
that time (on every replica). The cache holds at most ``cache_size`` tokens, unknown ones
included, evicting the oldest.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import threading
import time
from typing import TYPE_CHECKING, get_args

from starlette.concurrency import run_in_threadpool

from relaytrain.api.models import TokenScope
from relaytrain.errors import AuthError, Forbidden

if TYPE_CHECKING:
    from .store import Store

SCOPES: tuple[str, ...] = get_args(TokenScope)


class Authenticator:
    """Decides who a request is. With no admin token configured, every request is admitted
    (``relay serve`` allows that only on a loopback address)."""

    def __init__(self, store: Store, admin_token: str | None, *, cache_s: float = 30.0,
                 cache_size: int = 10_000) -> None:
        self.store = store
        self.admin_token = admin_token
        self.cache_s = cache_s
        self.cache_size = cache_size
        # token sha256 -> (scope or None for unknown, monotonic expiry), oldest first
        self._cache: collections.OrderedDict[str, tuple[str | None, float]] = collections.OrderedDict()
        self._lock = threading.Lock()  # `require` may run on several threads

    @property
    def enabled(self) -> bool:
        return self.admin_token is not None

    def require(self, authorization: str | None, scope: str) -> str:
        """Admit the request if its token reaches ``scope`` (admin reaches everything). May read
        the database: on the event loop use :meth:`require_async`."""
        have, digest = self._from_memory(authorization)
        if digest is not None:
            have = self._remember(digest, self.store.token_scope_by_hash(digest))
        return self._admit(have, scope)

    async def require_async(self, authorization: str | None, scope: str) -> str:
        """:meth:`require` for the event loop: a cached token is answered there at once; only a
        token not seen in the last ``cache_s`` is looked up, in a worker thread."""
        have, digest = self._from_memory(authorization)
        if digest is not None:
            have = self._remember(digest, await run_in_threadpool(self.store.token_scope_by_hash, digest))
        return self._admit(have, scope)

    def _from_memory(self, authorization: str | None) -> tuple[str | None, str | None]:
        """``(scope, None)`` when known without the database (None: unknown token), else
        ``(None, sha256)`` of the token to look up."""
        if not self.enabled:
            return "admin", None
        if not authorization or not authorization.lower().startswith("bearer "):
            raise AuthError("missing bearer token: send 'Authorization: Bearer <token>'")
        token = authorization[7:].strip().encode()
        if hmac.compare_digest(token, self.admin_token.encode()):  # type: ignore[union-attr]
            return "admin", None
        digest = hashlib.sha256(token).hexdigest()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0], None
        return None, digest

    def _remember(self, digest: str, scope: str | None) -> str | None:
        with self._lock:
            self._cache.pop(digest, None)
            self._cache[digest] = (scope, time.monotonic() + self.cache_s)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return scope

    @staticmethod
    def _admit(have: str | None, scope: str) -> str:
        if have is None:
            raise AuthError("unknown or revoked token")
        if have != "admin" and have != scope:
            raise Forbidden(f"a {have} token cannot reach this endpoint (needs {scope})")
        return have
