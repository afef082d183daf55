"""HTTP routes for bulk container job operations: create, change status, migrate, delete,
clean up and metrics.

A non-admin acts only on jobs they created: anyone else's job is reported "not found" per id,
as if it did not exist. Cleanup and metrics are for admins. Each response gives a count and
the errors per job id; an operation that changed nothing still answers 200 with its reasons,
except a migration, which answers 409 then.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field

from src.routes.deps import AdminUser, BulkOps, CurrentUser, owner_filter
from src.routes.validation import JsonRoute
from src.services.containers.bulk_operations import (
    MAX_BULK_CREATION_LIMIT,
    WRITE_CHUNK,
)
from src.services.domain.containers import ContainerJobStatus, ExecutorType

router = APIRouter(
    route_class=JsonRoute, prefix="/container-jobs/bulk", tags=["container jobs (bulk)"]
)

MAX_IDS = 10_000


JobId = Annotated[str, Field(min_length=1, max_length=100)]
JobIds = Annotated[list[JobId], Field(min_length=1, max_length=MAX_IDS)]


class BulkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    docker_image: str = Field(min_length=1, max_length=500)
    count: int = Field(ge=1, le=MAX_BULK_CREATION_LIMIT)
    #: A host id or name; routing picks one host for all the jobs when absent.
    host: str | None = Field(None, max_length=100)
    command: str = Field("", max_length=100_000)
    name: str = Field("", max_length=200)
    batch_size: int = Field(100, ge=1, le=WRITE_CHUNK)
    memory_limit: int | None = Field(None, gt=0, le=1_048_576, description="MB")
    cpu_limit: float | None = Field(None, ge=0.1, le=32)
    timeout_seconds: int = Field(3600, gt=0, le=7 * 24 * 3600)
    preferred_executor: ExecutorType | None = None
    priority: int = Field(0, ge=-100, le=100)
    max_retries: int = Field(0, ge=0, le=10)


class BulkCreated(BaseModel):
    created: int
    job_ids: list[str]
    errors: list[str]


class StatusChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_ids: JobIds
    status: ContainerJobStatus
    reason: str | None = Field(None, max_length=500)


class Migration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_ids: JobIds
    target_host: str = Field(min_length=1, max_length=100)


class Deletion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_ids: JobIds
    force: bool = False


class Cleanup(BaseModel):
    model_config = ConfigDict(extra="forbid")

    days_old: float = Field(ge=0, le=3650)


class BulkResult(BaseModel):
    #: Jobs changed (updated, migrated or deleted).
    count: int
    #: job id -> why it was not changed.
    errors: dict[str, str]


class CleanupResult(BaseModel):
    deleted: int


@router.post("", status_code=201, response_model=BulkCreated)
async def create_jobs(
    body: BulkCreate, user: CurrentUser, ops: BulkOps, response: Response
) -> BulkCreated:
    """Create `count` identical jobs; 201 when any were created, else 422 with the reasons;
    429 (nothing created) past BULKJOBS_USER_MAX_UNFINISHED_CONTAINER_JOBS."""
    fields = body.model_dump(exclude={"docker_image", "count", "host", "command", "batch_size"})
    jobs, errors = await ops.create_jobs_bulk(
        body.docker_image,
        body.count,
        user.user_id,
        body.host,
        body.command,
        body.batch_size,
        trusted=user.is_admin,
        limited=not user.is_admin,  # admins are not held to the per-user quota
        **fields,
    )
    if not jobs:
        response.status_code = 422
    return BulkCreated(created=len(jobs), job_ids=[job.id for job in jobs], errors=errors)


@router.post("/status", response_model=BulkResult)
async def change_status(body: StatusChange, user: CurrentUser, ops: BulkOps) -> BulkResult:
    """Apply a status to each job where the status table allows it; cancelling running
    jobs stops their containers. Other statuses belong to the processor: only admins may
    set them (to repair a job by hand); a job's owner may cancel it."""
    if not user.is_admin and body.status != ContainerJobStatus.CANCELLED:
        raise HTTPException(
            status_code=403, detail="only admins may set a status other than cancelled"
        )
    count, errors = await ops.bulk_update_job_status(
        body.job_ids, body.status, body.reason, owner=owner_filter(user)
    )
    return BulkResult(count=count, errors=errors)


@router.post("/migrate", response_model=BulkResult)
async def migrate_jobs(
    body: Migration, user: CurrentUser, ops: BulkOps, response: Response
) -> BulkResult:
    """Move jobs that have not started to another host (by id or name); 200 when any
    moved, else 409 with the reason per job (a non-admin's job never goes to a host that
    does not isolate it, whoever moves it)."""
    count, errors = await ops.migrate_jobs_to_host(
        body.job_ids, body.target_host, owner=owner_filter(user), trusted=user.is_admin
    )
    if count == 0 and errors:
        response.status_code = 409
    return BulkResult(count=count, errors=errors)


@router.post("/delete", response_model=BulkResult)
async def delete_jobs(body: Deletion, user: CurrentUser, ops: BulkOps) -> BulkResult:
    """Delete finished jobs; with `force`, unfinished ones too (containers stopped first)."""
    count, errors = await ops.bulk_delete_jobs(body.job_ids, body.force, owner=owner_filter(user))
    return BulkResult(count=count, errors=errors)


@router.post("/cleanup", response_model=CleanupResult)
async def cleanup_jobs(body: Cleanup, user: AdminUser, ops: BulkOps) -> CleanupResult:
    """Delete every finished job created more than `days_old` days ago."""
    return CleanupResult(deleted=await ops.bulk_cleanup_old_jobs(body.days_old))


@router.get("/metrics")
async def metrics(user: AdminUser, ops: BulkOps) -> dict[str, Any]:
    """Memory and CPU use, job counts by status and each host's utilization."""
    return await ops.get_bulk_operation_metrics()
