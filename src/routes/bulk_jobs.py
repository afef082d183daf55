"""HTTP routes for bulk jobs: create, list, status, cancel, delete, exports and downloads.

A created job is only stored here: the embedded worker (told to look now) or a `bulkjobs
worker` process runs it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from src.routes.deps import CurrentUser, Manager, Registry, Worker, owner_filter
from src.routes.files import OpenFileResponse
from src.routes.responses import model_response
from src.routes.validation import JsonRoute
from src.services.bulk_job_manager import MAX_EXPORT_HOURS, BulkJobManager
from src.services.domain import ApiToken, BulkJobStage, BulkJobStatus, Job, UserId
from src.services.errors import InvalidInput, NotFound
from src.services.job_types.registry import JobTypeRegistry
from src.services.reports import ExportReport, JobReport, job_report

router = APIRouter(route_class=JsonRoute, tags=["bulk jobs"])

JobType = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")]


class BulkJobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_type: JobType
    job_data: dict[str, Any] = Field(default_factory=dict)
    #: Defaults to the job type's stages.
    stages: list[BulkJobStage] | None = Field(None, min_length=1, max_length=10)
    priority: Literal["low", "normal", "high"] = "normal"
    estimated_duration_minutes: float | None = Field(None, ge=0, le=7 * 24 * 60)


class BulkProcessRequest(BaseModel):
    """The usage guide's request shape."""

    model_config = ConfigDict(extra="forbid")

    job_type: JobType
    user_id: UserId
    job_data: dict[str, Any] = Field(default_factory=dict)
    stages: list[BulkJobStage] | None = Field(None, min_length=1, max_length=10)


class JobAccepted(BaseModel):
    job_id: str
    status: str


class RetryAccepted(JobAccepted):
    #: The job whose failed items the new job retries.
    retry_of: str


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("cancelled by user", max_length=500)


async def _start(
    manager: BulkJobManager,
    registry: JobTypeRegistry,
    owner: str,
    request: BulkJobCreate | BulkProcessRequest,
    trusted: bool,
    **extra: Any,
) -> str:
    """Store the job; its data checked once, then validated and authorized by the job
    type's own hooks."""

    async def prepare(job_data: dict[str, Any]) -> dict[str, Any]:
        return await registry.authorized_job_data(
            request.job_type, job_data, manager, owner, trusted
        )

    return await manager.create_bulk_job(
        job_type=request.job_type,
        user_id=owner,
        job_data=request.job_data,
        stages=request.stages or _stages(registry, request.job_type),
        prepare=prepare,
        rate_limited=not trusted,  # admins are not rate limited
        **extra,
    )


def _stages(registry: JobTypeRegistry, job_type: str) -> list[str]:
    """The job type's stages; an unknown type is a 422 naming job_type."""
    if job_type not in registry:
        raise InvalidInput("job_type", f"unknown job type {job_type!r}; known: {registry.names()}")
    return registry.get(job_type).stages


@router.post("/bulk-jobs", status_code=202, response_model=JobAccepted)
async def create_bulk_job(
    body: BulkJobCreate,
    user: CurrentUser,
    manager: Manager,
    registry: Registry,
    worker: Worker,
) -> JobAccepted:
    """Start a bulk job of a registered type; a worker runs it."""
    job_id = await _start(
        manager,
        registry,
        user.user_id,
        body,
        user.is_admin,
        priority=body.priority,
        estimated_duration_minutes=body.estimated_duration_minutes,
    )
    if worker is not None:
        worker.wake()
    return JobAccepted(job_id=job_id, status=BulkJobStatus.PENDING)


@router.post("/bulk-process", status_code=202, response_model=JobAccepted)
async def start_bulk_process(
    body: BulkProcessRequest,
    user: CurrentUser,
    manager: Manager,
    registry: Registry,
    worker: Worker,
) -> JobAccepted:
    """Start a bulk job as the usage guide shows; only admins may act for another user."""
    if body.user_id != user.user_id and not user.is_admin:
        raise HTTPException(status_code=403, detail="user_id must be your own user id")
    job_id = await _start(manager, registry, body.user_id, body, user.is_admin)
    if worker is not None:
        worker.wake()
    return JobAccepted(job_id=job_id, status="started")


@router.get("/bulk-jobs", response_model=list[JobReport])
async def list_bulk_jobs(
    user: CurrentUser,
    manager: Manager,
    status: BulkJobStatus | None = None,
    job_type: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> Response:
    """The caller's jobs, newest first."""
    return model_response(await manager.get_user_jobs(user.user_id, status, job_type, limit))


async def _own_job(manager: BulkJobManager, user: ApiToken, job_id: str) -> Job:
    """The job (by id or a unique start of it) if the caller may see it; another user's job
    is indistinguishable from none."""
    return await manager.find_job(job_id, owner_filter(user))


@router.get("/bulk-jobs/{job_id}", response_model=JobReport)
async def get_bulk_job(job_id: str, user: CurrentUser, manager: Manager) -> Response:
    return model_response(job_report(await _own_job(manager, user, job_id)))


@router.get("/bulk-jobs/{job_id}/status", response_model=JobReport)
async def get_job_status(job_id: str, user: CurrentUser, manager: Manager) -> Response:
    """Job status and progress, as the usage guide shows."""
    return model_response(job_report(await _own_job(manager, user, job_id)))


@router.post("/bulk-jobs/{job_id}/cancel", response_model=JobAccepted)
async def cancel_bulk_job(
    job_id: str,
    user: CurrentUser,
    manager: Manager,
    body: CancelRequest | None = None,
) -> JobAccepted:
    """Cancel the job and any container jobs it started (their containers are stopped)."""
    job = await _own_job(manager, user, job_id)
    await manager.cancel_job(job.id, (body or CancelRequest()).reason)
    return JobAccepted(job_id=job.id, status=BulkJobStatus.CANCELLED)


@router.delete("/bulk-jobs/{job_id}", status_code=204, response_class=Response)
async def delete_bulk_job(job_id: str, user: CurrentUser, manager: Manager) -> Response:
    """Delete a finished job now, with its stages, exports, stage outputs and container
    jobs; 409 while it is pending or running (cancel it first)."""
    job = await _own_job(manager, user, job_id)
    await manager.delete_job(job.id)
    return Response(status_code=204)


@router.post("/bulk-jobs/{job_id}/retry", status_code=202, response_model=RetryAccepted)
async def retry_failed_items(
    job_id: str, user: CurrentUser, manager: Manager, registry: Registry, worker: Worker
) -> RetryAccepted:
    """Start a new job, linked by `retry_of`, over only the items of your ended job that
    failed; 409 while it runs, when none failed, or when its job type cannot tell which did.
    The new job counts against the rate limit as any other (429)."""
    job = await _own_job(manager, user, job_id)
    new_id = await manager.retry_failed(
        job.id,
        job.user_id,
        rate_limited=not user.is_admin,  # admins are not rate limited
        trusted=user.is_admin,
        job_types=registry,
    )
    if worker is not None:
        worker.wake()
    return RetryAccepted(job_id=new_id, status=BulkJobStatus.PENDING, retry_of=job.id)


@router.get("/bulk-jobs/{job_id}/exports", response_model=list[ExportReport])
async def list_exports(job_id: str, user: CurrentUser, manager: Manager) -> list[ExportReport]:
    return job_report(await _own_job(manager, user, job_id)).exports


class ExportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    export_format: Literal["json", "csv", "zip"]
    #: JSON: any value; CSV: a list of records; ZIP: an object of member name -> content.
    data: list[Any] | dict[str, Any]
    filename_prefix: str = Field("export", max_length=64)
    expires_in_hours: float | None = Field(None, gt=0, le=MAX_EXPORT_HOURS)


@router.post("/bulk-jobs/{job_id}/exports", status_code=201, response_model=ExportReport)
async def create_export(
    job_id: str, body: ExportCreate, user: CurrentUser, manager: Manager
) -> ExportReport:
    """Write an export for your job; 413 when it would exceed BULK_MAX_EXPORT_SIZE_MB or
    your BULKJOBS_USER_MAX_EXPORT_BYTES, 422 when `expires_in_hours` is past
    BULKJOBS_MAX_EXPORT_RETENTION_HOURS. Admins are held to neither quota."""
    job = await _own_job(manager, user, job_id)
    export_id = await manager.create_export(
        job.id,
        body.export_format,
        body.data,
        body.filename_prefix,
        body.expires_in_hours,
        limited=not user.is_admin,
    )
    report = job_report(await _own_job(manager, user, job.id))
    return next(export for export in report.exports if export.export_id == export_id)


@router.get("/bulk-jobs/{job_id}/export/{export_id}", response_class=FileResponse)
@router.head("/bulk-jobs/{job_id}/export/{export_id}", response_class=FileResponse)
async def download_export(
    job_id: str, export_id: str, user: CurrentUser, manager: Manager
) -> FileResponse:
    """Download an export file (HEAD: its headers only); the id is looked up, never used as
    a path. The file is opened before the response starts, so a download completes or is a
    404."""
    job = await _own_job(manager, user, job_id)
    opened = await manager.open_export(export_id)
    if opened is not None and opened[0].job_id != job.id:
        opened[1].close()
        opened = None
    if opened is None:
        raise NotFound("export not found or expired")
    export, file = opened
    return OpenFileResponse(file, media_type=export.content_type, filename=export.filename)


@router.get("/job-types")
async def list_job_types(user: CurrentUser, registry: Registry) -> list[dict[str, Any]]:
    """The job types this server can run, with their default stages."""
    return [
        {
            "job_type": name,
            "stages": registry.get(name).stages,
            "description": registry.get(name).description,
        }
        for name in registry.names()
    ]
