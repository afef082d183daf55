"""Domain values shared by the manager, the stores and the routes: bulk jobs here, container
jobs in `containers`, work items in `work`. Everything above the store imports them from
here; the store itself imports nothing above it."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict

from src.services.errors import InvalidInput

T = TypeVar("T")

Priority = Literal["low", "normal", "high"]
#: Claims of an item (a bulk job, a container job, a work item) before it is failed with its
#: last error: every failed attempt and every worker that died holding it uses one.
DEFAULT_MAX_ATTEMPTS = 5
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

EXPORT_STAGES = frozenset({BulkJobStage.EXPORT_PREPARATION, BulkJobStage.EXPORT_GENERATION})
#: Stages that set up, export or clean up around a job's items: their counts are not the
#: job's items (convex/validators.ts BOOKKEEPING_STAGES says the same).
BOOKKEEPING_STAGES = EXPORT_STAGES | {BulkJobStage.INITIALIZATION, BulkJobStage.CLEANUP}

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


MAX_USER_ID_CHARS = 200
#: Control characters and lone surrogates: never part of a user id.
NOT_IN_USER_IDS = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def valid_user_id(value: str) -> str:
    """The user id trimmed; ValueError unless it is 1 to 200 characters of printable text.

    An empty id would read as "no owner" wherever an owner filter is optional."""
    text = value.strip()
    if not text:
        raise ValueError("must not be empty or blank")
    if len(text) > MAX_USER_ID_CHARS:
        raise ValueError(f"must be at most {MAX_USER_ID_CHARS} characters")
    if NOT_IN_USER_IDS.search(text):
        raise ValueError("must not contain control characters or lone surrogates")
    return text


#: A user id in a request model (the same rule as check_user_id).
UserId = Annotated[str, AfterValidator(valid_user_id)]


def check_user_id(value: object, field: str = "user_id") -> str:
    """valid_user_id for a value from code or the command line: InvalidInput naming `field`."""
    if not isinstance(value, str):
        raise InvalidInput(field, "must be a string")
    try:
        return valid_user_id(value)
    except ValueError as exc:
        raise InvalidInput(field, str(exc)) from None


def job_status_for_stage(stage: str) -> BulkJobStatus:
    """The status a job takes when it starts this stage."""
    if stage == BulkJobStage.INITIALIZATION:
        return BulkJobStatus.INITIALIZING
    if stage in EXPORT_STAGES:
        return BulkJobStatus.EXPORTING
    return BulkJobStatus.PROCESSING


def new_id() -> str:
    """A random id (hex) for a new job, host or template."""
    return uuid.uuid4().hex


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
    #: Claims so far; a hand-back (a worker stopping cleanly) does not count.
    attempts: int = 0
    #: The stage started last (start_stage) or, once a stage failed the job, that stage.
    current_stage: str | None = None
    #: Why the last attempt failed (the job is claimed again after a back-off).
    last_error: str | None = None
    #: The job whose failed items this job retries (retry_failed), if it is such a retry.
    retry_of: str | None = None
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

    def running_stage(self) -> Stage | None:
        """The stage the job is in: the one started last while it runs, else the next one
        to run; None once the job has ended."""
        if self.is_terminal:
            return None
        started = self.stage(self.current_stage) if self.current_stage else None
        if started is not None and started.status == StageStatus.PROCESSING:
            return started
        return self.first_unfinished_stage()

    def failed_stage(self) -> Stage | None:
        """The stage whose failure failed the job, if that is how it ended."""
        stage = self.stage(self.current_stage) if self.current_stage else None
        if self.status != BulkJobStatus.FAILED or stage is None:
            return None
        return stage if stage.status == StageStatus.FAILED else None

    # The job's numbers are its items, not a sum over stages that may count the same items
    # again (or count bookkeeping such as writing the export).

    def item_stages(self) -> list[Stage]:
        """The stages that count the job's items; all of them if every one is bookkeeping."""
        counting = [stage for stage in self.stages if stage.name not in BOOKKEEPING_STAGES]
        return counting or self.stages

    @property
    def items_total(self) -> int | None:
        """job_data["total_items"] when given, else the largest total of an item stage."""
        given = _whole_number(self.job_data.get("total_items"))
        if given is not None:
            return given
        stages = self.item_stages()
        totals = [stage.items_total for stage in stages if stage.items_total is not None]
        return max(totals) if totals else None

    @property
    def items_completed(self) -> int:
        stage = self.items_stage()
        return 0 if stage is None else stage.items_completed

    @property
    def items_failed(self) -> int:
        stage = self.items_stage()
        return 0 if stage is None else stage.items_failed

    def items_stage(self) -> Stage | None:
        """The most advanced item stage: the last one running, else the last with items."""
        stages = self.item_stages()
        running = [stage for stage in stages if stage.status == StageStatus.PROCESSING]
        if running:
            return running[-1]
        counted = [stage for stage in stages if _has_items(stage)]
        return counted[-1] if counted else None


def _whole_number(value: Any) -> int | None:
    """A count given in job data (50, or 50.0 as a JSON store may return it), else None."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is not int or value < 0:
        return None
    return value


def _has_items(stage: Stage) -> bool:
    return stage.items_total is not None or stage.items_completed > 0 or stage.items_failed > 0


class NewJob(_Frozen):
    """What create() writes; the store adds ids, timestamps and stage rows."""

    job_type: str
    user_id: str
    job_data: dict[str, Any]
    stages: list[str]
    priority: Priority = "normal"
    estimated_duration_minutes: float | None = None
    job_id: str | None = None
    #: The job whose failed items this one retries.
    retry_of: str | None = None


class ClaimRules(_Frozen):
    """How a claim chooses: an item that used `max_attempts` claims is failed instead, and a
    user holding `max_running_per_user` running items gets no more (None: no cap)."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_running_per_user: int | None = None


class Failure(_Frozen):
    """A failed attempt, handed back with the lease: kept as the item's last error; the item
    is claimable again after `retry_in_s`, or failed with `error` once its attempts are used."""

    error: str
    retry_in_s: float
    max_attempts: int = DEFAULT_MAX_ATTEMPTS


#: The last error of an item whose worker died holding it.
DIED = "its worker stopped without reporting (a crash?)"


def gave_up(attempts: int, last_error: str) -> str:
    """The error of an item failed because its attempts were used up (the same words in
    both stores: convex/model/attempts.ts)."""
    return f"gave up after {attempts} attempts; last error: {last_error}"


def take_turns(queues: list[list[T]], limit: int) -> list[T]:
    """Round robin over the queues (one per user, in turn order): each round takes the next
    item of every queue that has one, until `limit` items are taken."""
    taken: list[T] = []
    for depth in range(max((len(queue) for queue in queues), default=0)):
        for queue in queues:
            if len(taken) >= limit:
                return taken
            if depth < len(queue):
                taken.append(queue[depth])
    return taken


class RateLimit(_Frozen):
    max_jobs: int
    window_s: float


class ApiToken(_Frozen):
    user_id: str
    is_admin: bool
    name: str
    created_at: datetime
    #: The first TOKEN_ID_CHARS characters of the token's SHA-256: names the token in lists
    #: and revocations without revealing anything of the secret.
    token_id: str = ""
    #: Refused from this time on; None: never expires.
    expires_at: datetime | None = None
    #: Refused since this time; None: not revoked.
    revoked_at: datetime | None = None

    def refusal(self, now: datetime) -> str | None:
        """Why this token no longer signs anyone in (revoked, expired), or None."""
        if self.revoked_at is not None:
            return f"this token was revoked at {self.revoked_at:%Y-%m-%d %H:%M} UTC"
        if self.expires_at is not None and self.expires_at <= now:
            return f"this token expired at {self.expires_at:%Y-%m-%d %H:%M} UTC"
        return None


#: Length of a token id (a prefix of the token's SHA-256 in hex).
TOKEN_ID_CHARS = 12


class JobDeletion(_Frozen):
    """What one `delete_job` call removed. The job itself goes last, with its stages and
    exports, once no container job of it is left (`done`)."""

    done: bool
    container_jobs: int = 0
    stages: int = 0
    exports: int = 0


class JobStats(_Frozen):
    total_jobs: int
    by_status: dict[str, int]
    by_type: dict[str, int]
    exports: int
    export_bytes: int
