"""FastAPI dependencies as Annotated aliases: the manager, the registry, the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from src.services.auth import TokenCache
from src.services.bulk_job_manager import BulkJobManager
from src.services.domain import ApiToken
from src.services.job_types.registry import JobTypeRegistry
from src.services.job_worker import JobWorker


async def get_manager(request: Request) -> BulkJobManager:
    manager: BulkJobManager = request.app.state.manager
    return manager


async def get_registry(request: Request) -> JobTypeRegistry:
    registry: JobTypeRegistry = request.app.state.registry
    return registry


async def get_worker(request: Request) -> JobWorker | None:
    worker: JobWorker | None = getattr(request.app.state, "worker", None)
    return worker


Manager = Annotated[BulkJobManager, Depends(get_manager)]
Registry = Annotated[JobTypeRegistry, Depends(get_registry)]
Worker = Annotated[JobWorker | None, Depends(get_worker)]


async def current_user(request: Request) -> ApiToken:
    """The caller, from `Authorization: Bearer <token>`; 401 otherwise.

    One dependency reading the header itself: each extra dependency node costs FastAPI
    measurable time on every request. The bearer scheme is declared in the OpenAPI document
    by the app instead (see `security_openapi`).
    """
    scheme, _, raw = request.headers.get("authorization", "").partition(" ")
    token = None
    if scheme.lower() == "bearer" and raw:
        cache: TokenCache = request.app.state.token_cache
        manager: BulkJobManager = request.app.state.manager
        token = await cache.authenticate(await manager.store(), raw.strip())
    if token is None:
        raise HTTPException(
            status_code=401,
            detail="a valid bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token


async def admin_user(user: Annotated[ApiToken, Depends(current_user)]) -> ApiToken:
    if not user.is_admin:
        raise HTTPException(status_code=403, detail="this needs an admin token")
    return user


def owner_filter(user: ApiToken) -> str | None:
    """Whose jobs a caller may act on: None (everyone's) for an admin, else their own."""
    return None if user.is_admin else user.user_id


CurrentUser = Annotated[ApiToken, Depends(current_user)]
AdminUser = Annotated[ApiToken, Depends(admin_user)]
