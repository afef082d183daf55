"""Admin routes for API tokens: list them (never their secrets or hashes) and revoke one."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel

from src.routes.deps import AdminUser, Manager, Tokens
from src.routes.validation import JsonRoute
from src.services.domain import ApiToken, UserId

router = APIRouter(route_class=JsonRoute, tags=["api tokens"])


class TokenPublic(BaseModel):
    #: The start of the token's hash: what `DELETE /admin/tokens/{token_id}` takes.
    token_id: str
    user_id: str
    is_admin: bool
    name: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, token: ApiToken) -> TokenPublic:
        return cls(
            token_id=token.token_id,
            user_id=token.user_id,
            is_admin=token.is_admin,
            name=token.name,
            created_at=token.created_at,
            expires_at=token.expires_at,
            revoked_at=token.revoked_at,
        )


@router.get("/admin/tokens", response_model=list[TokenPublic])
async def list_tokens(
    _: AdminUser,
    manager: Manager,
    user_id: Annotated[UserId | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
) -> list[TokenPublic]:
    """API tokens, newest first (only `user_id`'s when given), revoked and expired ones
    included."""
    store = await manager.store()
    return [TokenPublic.of(token) for token in await store.list_tokens(user_id, limit)]


@router.delete("/admin/tokens/{token_id}", status_code=204, response_class=Response)
async def revoke_token(token_id: str, _: AdminUser, manager: Manager, cache: Tokens) -> Response:
    """Revoke a token: from now on it is refused with 401 (by other servers within 10 s)."""
    token = await (await manager.store()).revoke_token(token_id)
    cache.forget(token.token_id)
    return Response(status_code=204)
