"""HTTP routes for bulk jobs: create, list, status, cancel, exports and downloads."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, HTTPException, Query, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from src.routes.containers import Containers
from src.routes.deps import CurrentUser, Manager, Registry, Worker
from src.routes.responses import model_response
from src.services.bulk_job_manager import BulkJobManager
from src.services.containers.service import ContainerJobService
from src.services.domain import ApiToken, BulkJobStage, BulkJobStatus, Job
from src.services.errors import NotFound
from src.services.job_types import container_batch
from src.services.job_types.registry import JobTypeRegistry
from src.services.job_worker import JobWorker
from src.services.reports import ExportReport, JobReport, job_report

router = APIRouter(tags=["bulk jobs"])

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
    user_id: str = Field(min_length=1, max_length=200)
    job_data: dict[str, Any] = Field(default_factory=dict)
    stages: list[BulkJobStage] | None = Field(None, min_length=1, max_length=10)


class JobAccepted(BaseModel):
    job_id: str
    status: str


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("cancelled by user", max_length=500)


async def _start(
    manager: BulkJobManager,
    registry: JobTypeRegistry,
    owner: str,
    request: BulkJobCreate | BulkProcessRequest,
    containers: ContainerJobService,
    trusted: bool,
    **extra: Any,
) -> str:
    manager.check_job_data(request.job_data)
    job_data = registry.validate_job_data(request.job_type, request.job_data)
    if request.job_type == container_batch.NAME:
        job_data = await container_batch.authorize(containers, job_data, owner, trusted)
    stages = request.stages or registry.get(request.job_type).stages
    return await manager.create_bulk_job(
        job_type=request.job_type,
        user_id=owner,
        job_data=job_data,
        stages=stages,
        **extra,
    )


def _schedule(
    job_id: str,
    manager: BulkJobManager,
    registry: JobTypeRegistry,
    worker: JobWorker | None,
    background_tasks: BackgroundTasks,
) -> None:
    """Hand the job to the in-process worker, or run it as a background task."""
    if worker is not None:
        worker.wake()
    else:
        background_tasks.add_task(_run_in_background, manager, registry, job_id)


async def _run_in_background(
    manager: BulkJobManager, registry: JobTypeRegistry, job_id: str
) -> None:
    job = await manager.get_job(job_id)
    if job is not None and job.job_type in registry:
        await manager.process_job_with_stages(job_id, registry.get(job.job_type).processors)


@router.post("/bulk-jobs", status_code=202, response_model=JobAccepted)
async def create_bulk_job(
    body: BulkJobCreate,
    user: CurrentUser,
    manager: Manager,
    registry: Registry,
    containers: Containers,
    worker: Worker,
    background_tasks: BackgroundTasks,
) -> JobAccepted:
    """Start a bulk job of a registered type; it runs in the background."""
    job_id = await _start(
        manager,
        registry,
        user.user_id,
        body,
        containers,
        user.is_admin,
        priority=body.priority,
        estimated_duration_minutes=body.estimated_duration_minutes,
    )
    _schedule(job_id, manager, registry, worker, background_tasks)
    return JobAccepted(job_id=job_id, status=BulkJobStatus.PENDING)


@router.post("/bulk-process", status_code=202, response_model=JobAccepted)
async def start_bulk_process(
    body: BulkProcessRequest,
    user: CurrentUser,
    manager: Manager,
    registry: Registry,
    containers: Containers,
    worker: Worker,
    background_tasks: BackgroundTasks,
) -> JobAccepted:
    """Start a bulk job as the usage guide shows; only admins may act for another user."""
    if body.user_id != user.user_id and not user.is_admin:
        raise HTTPException(status_code=403, detail="user_id must be your own user id")
    job_id = await _start(manager, registry, body.user_id, body, containers, user.is_admin)
    _schedule(job_id, manager, registry, worker, background_tasks)
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
    """The job if the caller may see it; another user's job is indistinguishable from none."""
    job = await manager.get_job(job_id)
    if job is None or (job.user_id != user.user_id and not user.is_admin):
        raise NotFound("job not found")
    return job


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
    containers: Containers,
    body: CancelRequest | None = None,
) -> JobAccepted:
    """Cancel the job and any container jobs it started (their containers are stopped)."""
    await _own_job(manager, user, job_id)
    await manager.cancel_job(job_id, (body or CancelRequest()).reason)
    await containers.cancel_for_bulk_job(job_id)
    return JobAccepted(job_id=job_id, status=BulkJobStatus.CANCELLED)


@router.get("/bulk-jobs/{job_id}/exports", response_model=list[ExportReport])
async def list_exports(job_id: str, user: CurrentUser, manager: Manager) -> list[ExportReport]:
    return job_report(await _own_job(manager, user, job_id)).exports


class ExportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    export_format: Literal["json", "csv", "zip"]
    #: JSON: any value; CSV: a list of records; ZIP: an object of member name -> content.
    data: list[Any] | dict[str, Any]
    filename_prefix: str = Field("export", max_length=64)
    expires_in_hours: float | None = Field(None, gt=0, le=24 * 365)


@router.post("/bulk-jobs/{job_id}/exports", status_code=201, response_model=ExportReport)
async def create_export(
    job_id: str, body: ExportCreate, user: CurrentUser, manager: Manager
) -> ExportReport:
    """Write an export for your job; 413 when it would exceed BULK_MAX_EXPORT_SIZE_MB."""
    await _own_job(manager, user, job_id)
    export_id = await manager.create_export(
        job_id, body.export_format, body.data, body.filename_prefix, body.expires_in_hours
    )
    report = job_report(await _own_job(manager, user, job_id))
    return next(export for export in report.exports if export.export_id == export_id)


@router.get("/bulk-jobs/{job_id}/export/{export_id}", response_class=FileResponse)
async def download_export(
    job_id: str, export_id: str, user: CurrentUser, manager: Manager
) -> FileResponse:
    """Download an export file; the id is looked up, never used as a path."""
    await _own_job(manager, user, job_id)
    export = await manager.get_export_info(export_id)
    path = await manager.get_export_file_path(export_id)
    if export is None or export.job_id != job_id or path is None:
        raise NotFound("export not found or expired")
    return FileResponse(path, media_type=export.content_type, filename=export.filename)


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
