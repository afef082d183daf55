"""The API token half of ConvexStore: the apiTokens Convex functions. Times travel as epoch
milliseconds."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from src.services.domain import ApiToken, from_epoch, to_datetime


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


def _token(doc: dict[str, Any]) -> ApiToken:
    return ApiToken(
        user_id=doc["userId"],
        is_admin=doc["isAdmin"],
        name=doc["name"],
        created_at=from_epoch(doc["createdAt"] / 1000),
        token_id=doc["tokenId"],
        expires_at=to_datetime(_seconds(doc.get("expiresAt"))),
        revoked_at=to_datetime(_seconds(doc.get("revokedAt"))),
    )


class ConvexTokenOps:
    """Mixed into ConvexStore, whose `_call` sends one function call."""

    if TYPE_CHECKING:

        async def _call(
            self, kind: Literal["query", "mutation"], path: str, args: Mapping[str, Any]
        ) -> Any: ...

    async def create_token(
        self,
        token_hash: str,
        user_id: str,
        is_admin: bool,
        name: str,
        expires_at: datetime | None = None,
    ) -> None:
        args = {
            "tokenHash": token_hash,
            "userId": user_id,
            "isAdmin": is_admin,
            "name": name,
            "expiresAt": None if expires_at is None else expires_at.timestamp() * 1000,
        }
        await self._call("mutation", "apiTokens:create", args)

    async def get_token(self, token_hash: str) -> ApiToken | None:
        doc = await self._call("query", "apiTokens:getByHash", {"tokenHash": token_hash})
        return None if doc is None else _token(doc)

    async def list_tokens(self, user_id: str | None = None, limit: int = 100) -> list[ApiToken]:
        args = {"userId": user_id, "limit": max(1, min(limit, 200))}
        return [_token(doc) for doc in await self._call("query", "apiTokens:list", args)]

    async def revoke_token(self, token_id: str) -> ApiToken:
        return _token(await self._call("mutation", "apiTokens:revoke", {"tokenId": token_id}))

    async def count_tokens(self) -> int:
        return int(await self._call("query", "apiTokens:count", {}))
