"""Every FastAPI dependency of the routes, as Annotated aliases: the manager, the job type
registry, the embedded worker, the container services, the event hub, the token cache, and
the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from src.services.auth import TokenCache
from src.services.bulk_job_manager import BulkJobManager
from src.services.containers.bulk_operations import ContainerBulkOperations
from src.services.containers.service import ContainerJobService
from src.services.domain import ApiToken
from src.services.errors import TokenRefused
from src.services.events import JobEventHub
from src.services.job_types.registry import JobTypeRegistry
from src.services.worker.scheduler import Scheduler


async def get_manager(request: Request) -> BulkJobManager:
    manager: BulkJobManager = request.app.state.manager
    return manager


async def get_registry(request: Request) -> JobTypeRegistry:
    registry: JobTypeRegistry = request.app.state.registry
    return registry


async def get_worker(request: Request) -> Scheduler | None:
    """The embedded worker, or None when this server only enqueues."""
    worker: Scheduler | None = getattr(request.app.state, "worker", None)
    return worker


async def get_containers(request: Request) -> ContainerJobService:
    service: ContainerJobService = request.app.state.containers
    return service


async def get_bulk_operations(request: Request) -> ContainerBulkOperations:
    service: ContainerJobService = request.app.state.containers
    return ContainerBulkOperations(service)


async def get_token_cache(request: Request) -> TokenCache:
    cache: TokenCache = request.app.state.token_cache
    return cache


async def get_events(request: Request) -> JobEventHub:
    hub: JobEventHub = request.app.state.events
    return hub


Manager = Annotated[BulkJobManager, Depends(get_manager)]
Containers = Annotated[ContainerJobService, Depends(get_containers)]
BulkOps = Annotated[ContainerBulkOperations, Depends(get_bulk_operations)]
Events = Annotated[JobEventHub, Depends(get_events)]
Registry = Annotated[JobTypeRegistry, Depends(get_registry)]
Worker = Annotated[Scheduler | None, Depends(get_worker)]


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
        try:
            token = await cache.authenticate(await manager.store(), raw.strip())
        except TokenRefused as exc:
            raise _unauthorized(f"{exc}; ask for a new token") from None
    if token is None:
        raise _unauthorized("a valid bearer token is required")
    return token


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


async def admin_user(user: Annotated[ApiToken, Depends(current_user)]) -> ApiToken:
    if not user.is_admin:
        raise HTTPException(status_code=403, detail="this needs an admin token")
    return user


def owner_filter(user: ApiToken) -> str | None:
    """Whose jobs a caller may act on: None (everyone's) for an admin, else their own --
    never None for a non-admin, whatever their user id holds."""
    if user.is_admin:
        return None
    if not user.user_id:  # authentication refuses such tokens; this guard keeps it so
        raise HTTPException(status_code=403, detail="this token has no user id")
    return user.user_id


CurrentUser = Annotated[ApiToken, Depends(current_user)]
AdminUser = Annotated[ApiToken, Depends(admin_user)]
Tokens = Annotated[TokenCache, Depends(get_token_cache)]
