"""FastAPI dependencies as Annotated aliases: the manager, the registry, the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from src.services.auth import authenticate
from src.services.bulk_job_manager import BulkJobManager
from src.services.domain import ApiToken
from src.services.job_types.registry import JobTypeRegistry
from src.services.job_worker import JobWorker

bearer = HTTPBearer(auto_error=False, description="A token from `bulkjobs token create`")


def get_manager(request: Request) -> BulkJobManager:
    manager: BulkJobManager = request.app.state.manager
    return manager


def get_registry(request: Request) -> JobTypeRegistry:
    registry: JobTypeRegistry = request.app.state.registry
    return registry


def get_worker(request: Request) -> JobWorker | None:
    worker: JobWorker | None = getattr(request.app.state, "worker", None)
    return worker


Manager = Annotated[BulkJobManager, Depends(get_manager)]
Registry = Annotated[JobTypeRegistry, Depends(get_registry)]
Worker = Annotated[JobWorker | None, Depends(get_worker)]


async def current_user(
    manager: Manager,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> ApiToken:
    unauthorized = HTTPException(
        status_code=401,
        detail="a valid bearer token is required",
        headers={"WWW-Authenticate": "Bearer"},
    )
    if credentials is None:
        raise unauthorized
    token = await authenticate(await manager.store(), credentials.credentials)
    if token is None:
        raise unauthorized
    return token


async def admin_user(user: Annotated[ApiToken, Depends(current_user)]) -> ApiToken:
    if not user.is_admin:
        raise HTTPException(status_code=403, detail="this needs an admin token")
    return user


CurrentUser = Annotated[ApiToken, Depends(current_user)]
AdminUser = Annotated[ApiToken, Depends(admin_user)]
