"""Bearer-token authentication: one admin token given at start; admin, submit, worker, rollout and
viewer tokens kept hashed in the database, each live until revoked or expired. A request is
admitted when its token's scope is one of those its route admits (the routes' decisions:
:mod:`relaytrain.commander.routes.deps`); the admin scope is admitted everywhere.

A database token's record is cached in-process by the token's sha256 for ``cache_s`` (30 s by
default) from the moment it was read, so a token revoked or deleted in the database stops working
within that time (on every replica). Expiry needs no database read: the cached ``expires_at`` is
checked on every request, so an expired token is refused the moment it expires, by this process's
clock (the dates are the store's: on PostgreSQL the database's clock). A replica whose clock is off
by a few seconds refuses a token that much early or late: tokens live minutes to years, and it is
leases that need one clock (:mod:`.store.clock`). The cache holds at most ``cache_size`` tokens,
unknown ones included, evicting the oldest.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import threading
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, get_args

from starlette.concurrency import run_in_threadpool

from relaytrain.api.models import TOKEN_CACHE_S, TokenScope
from relaytrain.errors import AuthError, Forbidden

if TYPE_CHECKING:
    from .store import Store

SCOPES: tuple[str, ...] = get_args(TokenScope)
ADMIN_SCOPE = "admin"
"""Admitted by every route behind a token."""
_ADMIN = {"name": "admin", "scope": ADMIN_SCOPE, "expires_at": None, "revoked_at": None}
"""The record of the admin token given at start."""


def utc_time(ts: float) -> str:
    """``2026-12-07T09:20:00Z``: how an error names a moment."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class Authenticator:
    """Decides who a request is. With no admin token configured, every request is admitted
    (``relay serve`` allows that only on a loopback address)."""

    def __init__(self, store: Store, admin_token: str | None, *, cache_s: float = TOKEN_CACHE_S,
                 cache_size: int = 10_000) -> None:
        self.store = store
        self.admin_token = admin_token
        self.cache_s = cache_s
        self.cache_size = cache_size
        # token sha256 -> (its record, or None for unknown; monotonic expiry), oldest first
        self._cache: collections.OrderedDict[str, tuple[dict[str, Any] | None, float]] = collections.OrderedDict()
        self._lock = threading.Lock()  # `require` may run on several threads

    @property
    def enabled(self) -> bool:
        return self.admin_token is not None

    def require(self, authorization: str | None, admitted: Collection[str]) -> str:
        """The request's scope, if it is one of ``admitted`` (or admin); else AuthError (no live
        token) or Forbidden. May read the database: on the event loop use :meth:`require_async`."""
        record, digest = self._from_memory(authorization)
        if digest is not None:
            record = self._remember(digest, self.store.token_by_hash(digest))
        return self._admit(record, admitted)

    async def require_async(self, authorization: str | None, admitted: Collection[str]) -> str:
        """:meth:`require` for the event loop: a cached token is answered there at once; only a
        token not seen in the last ``cache_s`` is looked up, in a worker thread."""
        record, digest = self._from_memory(authorization)
        if digest is not None:
            record = self._remember(digest, await run_in_threadpool(self.store.token_by_hash, digest))
        return self._admit(record, admitted)

    def _from_memory(self, authorization: str | None) -> tuple[dict[str, Any] | None, str | None]:
        """``(record, None)`` when known without the database (None: unknown token), else
        ``(None, sha256)`` of the token to look up."""
        if not self.enabled:
            return _ADMIN, None
        if not authorization or not authorization.lower().startswith("bearer "):
            raise AuthError("missing bearer token: send 'Authorization: Bearer <token>'")
        token = authorization[7:].strip().encode()
        if hmac.compare_digest(token, self.admin_token.encode()):  # type: ignore[union-attr]
            return _ADMIN, None
        digest = hashlib.sha256(token).hexdigest()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0], None
        return None, digest

    def _remember(self, digest: str, record: dict[str, Any] | None) -> dict[str, Any] | None:
        with self._lock:
            self._cache.pop(digest, None)
            self._cache[digest] = (record, time.monotonic() + self.cache_s)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return record

    @staticmethod
    def _admit(record: dict[str, Any] | None, admitted: Collection[str]) -> str:
        if record is None:
            raise AuthError("unknown or revoked token")
        if record["revoked_at"] is not None:
            raise AuthError(f"token {record['name']!r} was revoked at {utc_time(record['revoked_at'])}")
        if record["expires_at"] is not None and time.time() >= record["expires_at"]:
            raise AuthError(f"token {record['name']!r} expired at {utc_time(record['expires_at'])}")
        have = record["scope"]
        if have != ADMIN_SCOPE and have not in admitted:
            needs = " or ".join(s for s in SCOPES if s in admitted or s == ADMIN_SCOPE)
            raise Forbidden(f"a {have} token cannot reach this endpoint (needs {needs})")
        return have
