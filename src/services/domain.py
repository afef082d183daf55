"""Domain values shared by the manager, the stores and the routes."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Priority = Literal["low", "normal", "high"]
ExportFormat = Literal["json", "csv", "zip"]


class BulkJobStatus(StrEnum):
    PENDING = "pending"
    INITIALIZING = "initializing"
    PROCESSING = "processing"
    EXPORTING = "exporting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class BulkJobStage(StrEnum):
    INITIALIZATION = "initialization"
    VALIDATION = "validation"
    CONTENT_FETCH = "content_fetch"
    CONTENT_PROCESSING = "content_processing"
    AUDIO_EXTRACTION = "audio_extraction"
    TRANSCRIPTION = "transcription"
    VOICE_PREPARATION = "voice_preparation"
    EXPORT_PREPARATION = "export_preparation"
    EXPORT_GENERATION = "export_generation"
    CLEANUP = "cleanup"


class StageStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


ACTIVE_JOB_STATUSES = frozenset(
    {BulkJobStatus.INITIALIZING, BulkJobStatus.PROCESSING, BulkJobStatus.EXPORTING}
)
TERMINAL_JOB_STATUSES = frozenset(
    {BulkJobStatus.COMPLETED, BulkJobStatus.FAILED, BulkJobStatus.CANCELLED}
)
TERMINAL_STAGE_STATUSES = frozenset(
    {StageStatus.COMPLETED, StageStatus.FAILED, StageStatus.SKIPPED}
)

#: Allowed job status transitions; anything else is a Conflict.
JOB_TRANSITIONS: dict[BulkJobStatus, frozenset[BulkJobStatus]] = {
    BulkJobStatus.PENDING: ACTIVE_JOB_STATUSES | TERMINAL_JOB_STATUSES,
    **{status: ACTIVE_JOB_STATUSES | TERMINAL_JOB_STATUSES for status in ACTIVE_JOB_STATUSES},
    **{status: frozenset() for status in TERMINAL_JOB_STATUSES},
}

#: Allowed stage transitions; processing -> processing restarts a stage on resume.
STAGE_TRANSITIONS: dict[StageStatus, frozenset[StageStatus]] = {
    StageStatus.PENDING: frozenset({StageStatus.PROCESSING, StageStatus.SKIPPED}),
    StageStatus.PROCESSING: frozenset(
        {StageStatus.PROCESSING, StageStatus.COMPLETED, StageStatus.FAILED, StageStatus.SKIPPED}
    ),
    StageStatus.COMPLETED: frozenset(),
    StageStatus.FAILED: frozenset(),
    StageStatus.SKIPPED: frozenset(),
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def from_epoch(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def to_datetime(epoch_s: float | None) -> datetime | None:
    return None if epoch_s is None else datetime.fromtimestamp(epoch_s, UTC)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class Stage(_Frozen):
    name: str
    index: int
    status: StageStatus = StageStatus.PENDING
    #: Fraction done, in [0, 1].
    progress: float = 0.0
    items_total: int | None = None
    items_completed: int = 0
    items_failed: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error_message: str | None = None
    metadata: dict[str, Any] = {}

    @property
    def effective_progress(self) -> float:
        if self.status in (StageStatus.COMPLETED, StageStatus.SKIPPED):
            return 1.0
        return self.progress


class Export(_Frozen):
    id: str
    job_id: str
    user_id: str
    format: ExportFormat
    #: File name offered to the downloader.
    filename: str
    #: Path relative to BULK_EXPORT_PATH; never derived from a request.
    relative_path: str
    content_type: str
    size_bytes: int
    sha256: str
    created_at: datetime
    expires_at: datetime


class Job(_Frozen):
    id: str
    job_type: str
    user_id: str
    status: BulkJobStatus
    priority: Priority = "normal"
    job_data: dict[str, Any] = {}
    #: Values merged in by update_job_status(..., updates=...).
    results: dict[str, Any] = {}
    estimated_duration_minutes: float | None = None
    error_message: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    attempts: int = 0
    stages: list[Stage] = []
    exports: list[Export] = []

    @property
    def progress(self) -> float:
        if not self.stages:
            return 1.0 if self.status == BulkJobStatus.COMPLETED else 0.0
        return sum(stage.effective_progress for stage in self.stages) / len(self.stages)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES

    def stage(self, name: str) -> Stage | None:
        return next((stage for stage in self.stages if stage.name == name), None)

    def first_unfinished_stage(self) -> Stage | None:
        return next(
            (stage for stage in self.stages if stage.status not in TERMINAL_STAGE_STATUSES), None
        )


class NewJob(_Frozen):
    """What create() writes; the store adds ids, timestamps and stage rows."""

    job_type: str
    user_id: str
    job_data: dict[str, Any]
    stages: list[str]
    priority: Priority = "normal"
    estimated_duration_minutes: float | None = None
    job_id: str | None = None


class RateLimit(_Frozen):
    max_jobs: int
    window_s: float


class ApiToken(_Frozen):
    user_id: str
    is_admin: bool
    name: str
    created_at: datetime


class JobStats(_Frozen):
    total_jobs: int
    by_status: dict[str, int]
    by_type: dict[str, int]
    exports: int
    export_bytes: int
