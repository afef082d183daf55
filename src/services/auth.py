"""API tokens: created once, shown once, stored only as a SHA-256 hash; optionally with an
expiry, and revocable. A revoked or expired token is refused with TokenRefused saying which.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import timedelta

from src.services.domain import TOKEN_ID_CHARS, ApiToken, check_user_id, utcnow, valid_user_id
from src.services.errors import InvalidInput, TokenRefused
from src.services.store.base import Store

TOKEN_PREFIX = "bjt_"
#: The longest expiry a token may be given, in days (ten years).
MAX_TOKEN_DAYS = 3650


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def token_id(raw: str) -> str:
    """The id lists and revocations name the token by (the start of its hash)."""
    return hash_token(raw)[:TOKEN_ID_CHARS]


async def create_api_token(
    store: Store,
    user_id: str,
    is_admin: bool = False,
    name: str = "",
    expires_in_days: float | None = None,
) -> str:
    """Create a token for `user_id` (trimmed; InvalidInput if empty, blank or over 200
    characters), refused after `expires_in_days` when given; the raw value is returned once
    and never stored."""
    user_id = check_user_id(user_id, "user")
    expires_at = None
    if expires_in_days is not None:
        expires_at = utcnow() + timedelta(days=_check_days(expires_in_days))
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    label = name or f"token for {user_id}"
    await store.create_token(hash_token(raw), user_id, is_admin, label, expires_at)
    return raw


def _check_days(days: float) -> float:
    if isinstance(days, bool) or not isinstance(days, int | float):
        raise InvalidInput("expires_in_days", "must be a number of days")
    if not 0 < days <= MAX_TOKEN_DAYS:  # NaN fails this too
        raise InvalidInput("expires_in_days", f"must be > 0 and <= {MAX_TOKEN_DAYS}")
    return float(days)


async def authenticate(store: Store, raw: str) -> ApiToken | None:
    """The token's owner, or None for no such token; TokenRefused, saying why, for a
    revoked or expired one.

    The raw token is never compared: the store is searched by its SHA-256, and how long an
    index lookup of a digest takes says nothing about which bytes of a guess were right (a
    guess that shares a prefix with a real token shares nothing with its digest). That is
    the constant-time property byte comparison of stored secrets would need hmac for.
    """
    if not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        return None
    token = await store.get_token(hash_token(raw))
    if token is None or not _well_formed(token.user_id):
        return None
    return _usable(token)


def _usable(token: ApiToken) -> ApiToken:
    refusal = token.refusal(utcnow())
    if refusal is not None:
        raise TokenRefused(refusal)
    return token


def _well_formed(user_id: str) -> bool:
    """A token stored before user ids were checked may carry an empty id, which must not
    act as anyone (an empty owner filter would read as "everyone's")."""
    try:
        return valid_user_id(user_id) == user_id
    except ValueError:
        return False


class TokenCache:
    """Remembers recent successful lookups for a few seconds, saving a store call a request.
    A token revoked through this process is forgotten at once (`forget`); one revoked
    elsewhere is refused here within `ttl_s`. Expiry is checked on every hit."""

    def __init__(self, ttl_s: float = 10.0, max_entries: int = 10_000) -> None:
        self._ttl = ttl_s
        self._max = max_entries
        self._entries: dict[str, tuple[float, ApiToken]] = {}

    async def authenticate(self, store: Store, raw: str) -> ApiToken | None:
        digest = hash_token(raw)
        hit = self._entries.get(digest)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return _usable(hit[1])
        token = await authenticate(store, raw)
        if token is not None:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[digest] = (now + self._ttl, token)
        return token

    def forget(self, token_id: str) -> None:
        """Drop the cached lookup of the token with this id (it was just revoked)."""
        for digest in [digest for digest in self._entries if digest.startswith(token_id)]:
            del self._entries[digest]
