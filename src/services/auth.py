"""API tokens: created once, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets

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
    """The token's owner, or None. Lookup is by hash, so timing reveals nothing of the value."""
    if not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        return None
    digest = hash_token(raw)
    token = await store.get_token(digest)
    if token is None or not hmac.compare_digest(digest, hash_token(raw)):
        return None
    return token
