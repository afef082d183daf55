"""The public view of a job: what get_job_status returns and the HTTP API sends."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from src.services.domain import BulkJobStatus, Job, Stage, StageStatus, utcnow


class StageReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    status: StageStatus
    progress: float
    items_total: int | None
    items_completed: int
    items_failed: int
    started_at: datetime | None
    completed_at: datetime | None
    error_message: str | None
    metadata: dict[str, Any]


class ExportReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    export_id: str
    format: str
    filename: str
    content_type: str
    size_bytes: int
    sha256: str
    created_at: datetime
    expires_at: datetime
    expired: bool


class JobReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    job_id: str
    job_type: str
    user_id: str
    status: BulkJobStatus
    priority: str
    progress: float
    #: The stage running now (else the next to run); None once the job has ended.
    current_stage: str | None
    #: The stage whose failure failed the job, when that is how it ended.
    failed_stage: str | None
    #: The job's items (Job.items_total); each stage keeps its own counts.
    items_total: int | None
    items_completed: int
    items_failed: int
    stages: list[StageReport]
    exports: list[ExportReport]
    job_data: dict[str, Any]
    results: dict[str, Any]
    error_message: str | None
    estimated_duration_minutes: float | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    #: Seconds left, extrapolated from progress so far; None until there is progress.
    eta_seconds: float | None
    #: The job whose failed items this job retries, if it is such a retry.
    retry_of: str | None = None


def job_report(job: Job) -> JobReport:
    current = job.running_stage()
    failed = job.failed_stage()
    now = utcnow()
    return JobReport(
        job_id=job.id,
        job_type=job.job_type,
        user_id=job.user_id,
        status=job.status,
        priority=job.priority,
        progress=round(job.progress, 6),
        current_stage=None if current is None else current.name,
        failed_stage=None if failed is None else failed.name,
        items_total=job.items_total,
        items_completed=job.items_completed,
        items_failed=job.items_failed,
        stages=[_stage_report(stage) for stage in job.stages],
        exports=[
            ExportReport(
                export_id=export.id,
                expired=export.expires_at <= now,
                **export.model_dump(
                    include={
                        "format",
                        "filename",
                        "content_type",
                        "size_bytes",
                        "sha256",
                        "created_at",
                        "expires_at",
                    }
                ),
            )
            for export in job.exports
        ],
        job_data=job.job_data,
        results=job.results,
        error_message=job.error_message,
        estimated_duration_minutes=job.estimated_duration_minutes,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        completed_at=job.completed_at,
        eta_seconds=_eta(job),
        retry_of=job.retry_of,
    )


def _stage_report(stage: Stage) -> StageReport:
    fields = {name: getattr(stage, name) for name in StageReport.model_fields}
    return StageReport.model_construct(**fields)


def stage_times(stage: StageReport, now: datetime) -> tuple[float | None, float | None]:
    """Seconds the stage has run (or ran), and while it runs the seconds left at its own
    pace so far; None where not known yet."""
    if stage.started_at is None:
        return None, None
    running = stage.status == StageStatus.PROCESSING
    end = now if running or stage.completed_at is None else stage.completed_at
    elapsed = max(0.0, (end - stage.started_at).total_seconds())
    if not running or stage.progress <= 0:
        return elapsed, None
    return elapsed, elapsed * (1 - stage.progress) / stage.progress


def _eta(job: Job) -> float | None:
    if job.is_terminal or job.started_at is None or job.progress <= 0:
        return None
    elapsed = (utcnow() - job.started_at).total_seconds()
    return round(elapsed * (1 - job.progress) / job.progress, 1)
