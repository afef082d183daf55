"""API tokens: created once, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets
import time

from src.services.domain import ApiToken
from src.services.store.base import Store

TOKEN_PREFIX = "bjt_"


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


async def create_api_token(
    store: Store, user_id: str, is_admin: bool = False, name: str = ""
) -> str:
    """Create a token for `user_id`; the raw value is returned once and never stored."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await store.create_token(hash_token(raw), user_id, is_admin, name or f"token for {user_id}")
    return raw


async def authenticate(store: Store, raw: str) -> ApiToken | None:
    """The token's owner, or None.

    The raw token is never compared: the store is searched by its SHA-256, and how long an
    index lookup of a digest takes says nothing about which bytes of a guess were right (a
    guess that shares a prefix with a real token shares nothing with its digest). That is
    the constant-time property byte comparison of stored secrets would need hmac for.
    """
    if not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        return None
    return await store.get_token(hash_token(raw))


class TokenCache:
    """Remembers recent successful lookups for a few seconds, saving a store call a request."""

    def __init__(self, ttl_s: float = 10.0, max_entries: int = 10_000) -> None:
        self._ttl = ttl_s
        self._max = max_entries
        self._entries: dict[str, tuple[float, ApiToken]] = {}

    async def authenticate(self, store: Store, raw: str) -> ApiToken | None:
        digest = hash_token(raw)
        hit = self._entries.get(digest)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        token = await authenticate(store, raw)
        if token is not None:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[digest] = (now + self._ttl, token)
        return token
