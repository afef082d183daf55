"""BulkJobManager: staged bulk jobs, live progress and exports over any Store.

Application code uses the module-level `bulk_job_manager` as the usage guide shows; it reads
the settings and opens the store on first use, and `await bulk_job_manager.aclose()` (or the
app's lifespan) closes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import orjson

from src.config import Settings, get_settings
from src.services import metrics
from src.services.containers.cascade import cancel_container_jobs
from src.services.containers.factory import ExecutorFactory
from src.services.domain import (
    BulkJobStage,
    BulkJobStatus,
    Export,
    ExportFormat,
    Job,
    JobDeletion,
    JobStats,
    NewJob,
    Priority,
    RateLimit,
    check_user_id,
    utcnow,
)
from src.services.errors import (
    Conflict,
    ExportQuotaExceeded,
    ExportTooLarge,
    InvalidInput,
    NotFound,
    RateLimited,
)
from src.services.export_files import (
    SWEEP_GRACE_S,
    Swept,
    new_export_id,
    remove_job_files,
    sweep,
)
from src.services.exports import WrittenExport, file_extension, write_export
from src.services.id_prefix import MAX_MATCHES, can_be_prefix, unique_match
from src.services.progress import ProgressWriter
from src.services.reports import JobReport, job_report
from src.services.runner import JobEventHook, JobPort, StageRetryPolicy, StageServices
from src.services.store import open_store
from src.services.store.base import Store
from src.services.worker.inline import run_job_here
from src.services.worker.sources import KINDS

__all__ = [
    "BulkJobManager",
    "BulkJobStage",
    "BulkJobStatus",
    "bulk_job_manager",
]

log = logging.getLogger(__name__)

STAGE_NAMES = frozenset(stage.value for stage in BulkJobStage)
#: Container jobs deleted per store call when a job is deleted (one small transaction).
DELETE_BATCH = 100
#: Jobs one retention sweep deletes at most; the next sweep goes on where it stopped.
RETENTION_SWEEP_MAX = 1000


def validate_stages(stages: list[BulkJobStage] | list[str]) -> list[str]:
    """Stage names in order; unknown or repeated names are an InvalidInput."""
    names = [str(stage.value if isinstance(stage, BulkJobStage) else stage) for stage in stages]
    if not names:
        raise InvalidInput("stages", "at least one stage is required")
    unknown = [name for name in names if name not in STAGE_NAMES]
    if unknown:
        raise InvalidInput("stages", f"unknown stage names {unknown}")
    if len(set(names)) != len(names):
        raise InvalidInput("stages", "a stage may appear only once")
    return names


class JobDataHook(Protocol):
    """Turns checked job_data into what is stored (validated, authorized), or raises."""

    async def __call__(self, job_data: dict[str, Any], /) -> dict[str, Any]: ...


class RetryPlanner(Protocol):
    """Says what a retry of a job's failed items runs over (the job type registry does)."""

    async def retry_job_data(
        self, job: Job, services: StageServices, trusted: bool
    ) -> dict[str, Any] | None: ...


def _registered_job_types() -> RetryPlanner:
    # Imported here: the job types import this module.
    from src.services.job_types import job_types

    return job_types


class BulkJobManager:
    """Creates, drives and reports on bulk jobs. One instance per process is enough."""

    def __init__(self, settings: Settings | None = None, store: Store | None = None) -> None:
        self._settings = settings
        self._store = store
        self._owns_store = store is None
        self._progress: ProgressWriter | None = None
        self._executors: ExecutorFactory | None = None
        self._open_lock = asyncio.Lock()
        #: Awaited after each job write made through this manager; progress writes excepted.
        self.on_job_event: JobEventHook | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = get_settings()
        return self._settings

    async def store(self) -> Store:
        """The store, opened on first use."""
        if self._store is None:
            async with self._open_lock:
                if self._store is None:
                    self._store = await open_store(self.settings)
        return self._store

    async def progress_writer(self) -> ProgressWriter:
        if self._progress is None:
            self._progress = ProgressWriter(await self.store(), self.settings.progress_interval_s)
        return self._progress

    async def job_port(self) -> JobPort:
        """The narrow port runners carry a job through (the manager itself stays out)."""
        store = await self.store()
        writer = await self.progress_writer()
        return JobPort(store, writer, self._job_event, self.settings.bulk_export_path, self)

    async def executors(self) -> ExecutorFactory:
        """The container executors of this process (one per host), created on first use."""
        if self._executors is None:
            self._executors = ExecutorFactory(
                await self.store(), self.settings.bulkjobs_local_work_dir
            )
        return self._executors

    async def close_executors(self) -> None:
        if self._executors is not None:
            executors, self._executors = self._executors, None
            await executors.aclose()

    async def aclose(self) -> None:
        """Flush pending progress, close the executors, and close the store if this manager
        opened it."""
        await self.close_executors()
        if self._progress is not None:
            await self._progress.aclose()
            self._progress = None
        if self._store is not None and self._owns_store:
            await self._store.aclose()
            self._store = None

    async def _job_event(self, job_id: str, event: str) -> None:
        if self.on_job_event is not None:
            try:
                await self.on_job_event(job_id, event)
            except Exception:  # a listener's failure must not fail the job
                log.warning("job event hook failed", exc_info=True)

    async def create_bulk_job(
        self,
        job_type: str,
        user_id: str,
        job_data: dict[str, Any],
        stages: list[BulkJobStage] | list[str],
        estimated_duration_minutes: float | None = None,
        priority: Priority = "normal",
        job_id: str | None = None,
        prepare: JobDataHook | None = None,
        *,
        rate_limited: bool = True,
        retry_of: str | None = None,
    ) -> str:
        """Create a pending job; raises RateLimited when the user is over the limit (unless
        `rate_limited` is False: admins and the operator's CLI are not limited). `retry_of`
        names the job whose failed items it retries.

        job_data is checked once (an object within BULK_MAX_JOB_DATA_BYTES), then passed
        through `prepare` (the routes' job type validation and authorization) if given."""
        user_id = check_user_id(user_id)
        self.check_job_data(job_data)
        if prepare is not None:
            job_data = await prepare(job_data)
        new = NewJob(
            job_type=job_type,
            user_id=user_id,
            job_data=job_data,
            stages=validate_stages(stages),
            priority=priority,
            estimated_duration_minutes=estimated_duration_minutes,
            job_id=job_id,
            retry_of=retry_of,
        )
        limit = None
        if rate_limited:
            limit = RateLimit(
                max_jobs=self.settings.bulk_rate_limit_max_jobs,
                window_s=self.settings.rate_limit_window_s,
            )
        try:
            job_id = await (await self.store()).create(new, limit)
        except RateLimited:
            metrics.RATE_LIMITED.inc()
            raise
        log.info("job created", extra={"job_id": job_id, "user_id": user_id})
        await self._job_event(job_id, "created")
        return job_id

    async def retry_failed(
        self,
        job_id: str,
        user_id: str | None = None,
        *,
        rate_limited: bool = True,
        trusted: bool = True,
        job_types: RetryPlanner | None = None,
    ) -> str:
        """Create a job over only the items of job `job_id` that failed, for the same user,
        with `retry_of` naming it; returns the new job's id. `job_id` may be a unique start
        of the id; with `user_id` only that user's jobs count. The job type says which items
        failed (its `retry_data`). Conflict while the job runs, when none of its items
        failed, or when its type cannot tell; RateLimited as for any new job (unless
        `rate_limited` is False); `trusted` False authorizes the new job's data as a
        non-admin's request would be."""
        job = await self.find_job(job_id, user_id)
        if not job.is_terminal:
            raise Conflict(f"job {job.id} is still {job.status}; retry it once it has ended")
        if not any(stage.items_failed for stage in job.stages):
            raise Conflict(f"job {job.id} has no failed items to retry")
        planner = job_types or _registered_job_types()
        job_data = await planner.retry_job_data(job, self, trusted)
        if job_data is None:
            raise Conflict(f"job {job.id} has no failed items to retry")
        return await self.create_bulk_job(
            job.job_type,
            job.user_id,
            job_data,
            [stage.name for stage in job.stages],
            priority=job.priority,
            rate_limited=rate_limited,
            retry_of=job.id,
        )

    def check_job_data(self, job_data: dict[str, Any]) -> None:
        """InvalidInput unless job_data is an object within BULK_MAX_JOB_DATA_BYTES."""
        if not isinstance(job_data, dict):
            raise InvalidInput("job_data", "must be an object")
        try:
            size = len(orjson.dumps(job_data, default=str))
        except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits
            raise InvalidInput("job_data", f"cannot be stored: {exc}") from None
        if size > self.settings.bulk_max_job_data_bytes:
            limit = self.settings.bulk_max_job_data_bytes
            raise InvalidInput("job_data", f"is {size} bytes; the limit is {limit} bytes")

    async def update_job_status(
        self,
        job_id: str,
        status: BulkJobStatus | str,
        updates: dict[str, Any] | None = None,
        error_message: str | None = None,
    ) -> None:
        """Move the job to `status`, merging `updates` into its results."""
        store = await self.store()
        await store.update_status(job_id, BulkJobStatus(status), updates, error_message)
        await self._job_event(job_id, "status")

    async def get_job(self, job_id: str) -> Job | None:
        return await (await self.store()).get_job(job_id)

    async def find_job(self, job_id: str, user_id: str | None = None) -> Job:
        """The job `job_id` names: the job of that id, or the one whose id starts with it.
        With `user_id`, only that user's jobs count (another's reads as missing). NotFound
        when none, AmbiguousId (with the number of matches) when several."""
        store = await self.store()
        job = await store.get_job(job_id) if can_be_prefix(job_id) else None
        if job is not None and user_id in (None, job.user_id):
            return job
        matches = []
        if can_be_prefix(job_id):
            matches = await store.get_job_ids_by_prefix(job_id, user_id, MAX_MATCHES + 1)
        found = await store.get_job(unique_match("job_id", job_id, matches, "job"))
        if found is None:  # deleted between the two reads
            raise NotFound(f"job {job_id} not found")
        return found

    async def get_job_status(self, job_id: str) -> JobReport | None:
        """The job with its stages, overall progress, counts and exports; None if missing."""
        job = await self.get_job(job_id)
        return None if job is None else job_report(job)

    async def get_user_jobs(
        self,
        user_id: str,
        status: BulkJobStatus | str | None = None,
        job_type: str | None = None,
        limit: int = 10,
    ) -> list[JobReport]:
        store = await self.store()
        wanted = BulkJobStatus(status) if status else None
        jobs = await store.get_user_jobs(check_user_id(user_id), wanted, job_type, limit)
        return [job_report(job) for job in jobs]

    async def cancel_job(self, job_id: str, reason: str = "cancelled by user") -> None:
        """Cancel a job and the container jobs it started (their containers are stopped);
        its runner notices at the next progress write or heartbeat."""
        job = await self.get_job(job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        if job.is_terminal:
            raise Conflict(f"job {job_id} is already {job.status}")
        await self.update_job_status(job_id, BulkJobStatus.CANCELLED, error_message=reason)
        if self._progress is not None:
            self._progress.discard_job(job_id)
        await cancel_container_jobs(await self.store(), await self.executors(), job_id)

    async def get_job_stats(self) -> JobStats:
        return await (await self.store()).get_job_stats()

    async def start_stage(
        self, job_id: str, stage: BulkJobStage | str, items_total: int | None = None
    ) -> None:
        """Start (or restart) a stage; the job moves to initializing, processing or
        exporting with it. Conflict once the job has ended."""
        if items_total is not None and items_total < 0:
            raise InvalidInput("items_total", "must not be negative")
        await (await self.store()).start_stage(job_id, str(stage), items_total)
        (self._progress or await self.progress_writer()).started(job_id, str(stage))
        await self._job_event(job_id, "stage")

    async def update_stage_progress(
        self,
        job_id: str,
        stage: BulkJobStage | str,
        progress: float,
        items_completed: int | None = None,
        items_failed: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Report progress (coalesced); raises JobCancelled once the job was cancelled."""
        writer = self._progress or await self.progress_writer()
        name = stage if type(stage) is str else str(stage)
        await writer.update(job_id, name, progress, items_completed, items_failed, metadata)

    async def complete_stage(
        self,
        job_id: str,
        stage: BulkJobStage | str,
        items_completed: int | None = None,
        items_failed: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Complete a stage; completing the last one left to run completes the job."""
        writer = await self.progress_writer()
        await writer.complete_stage(job_id, str(stage), items_completed, items_failed, metadata)
        await self._job_event(job_id, "stage")

    async def fail_stage(
        self,
        job_id: str,
        stage: BulkJobStage | str,
        error_message: str,
        metadata: dict[str, Any] | None = None,
        fatal: bool = True,
    ) -> None:
        """Fail a stage and with it the job (its error message and this stage recorded);
        with fatal=False only the stage fails and the job keeps running."""
        writer = await self.progress_writer()
        await writer.fail_stage(job_id, str(stage), error_message, metadata, fatal)
        await self._job_event(job_id, "stage")

    async def process_job_with_stages(
        self,
        job_id: str,
        stage_processors: Mapping[BulkJobStage | str, Any],
        kinds: Collection[str] = KINDS,
        stage_retries: Mapping[BulkJobStage | str, StageRetryPolicy] | None = None,
    ) -> JobReport | None:
        """Run the job's stages with these processors in this process, under a lease, to the
        end, together with the other kinds of work it needs (`kinds`; by default its
        container jobs too); a stage in `stage_retries` is retried under its policy when its
        processor raises a transient error. Returns at once if another worker holds the job."""
        job = await self.get_job(job_id)
        if job is not None and not job.is_terminal:
            processors = {str(stage): fn for stage, fn in stage_processors.items()}
            retries = {str(stage): policy for stage, policy in (stage_retries or {}).items()}
            port, executors = await self.job_port(), await self.executors()
            await run_job_here(port, executors, self.settings, job, processors, kinds, retries)
        return await self.get_job_status(job_id)

    async def create_export(
        self,
        job_id: str,
        export_format: ExportFormat,
        data: Any,
        filename_prefix: str = "export",
        expires_in_hours: float | None = None,
        *,
        limited: bool = True,
    ) -> str:
        """Write `data` as a JSON, CSV or ZIP file for the job; returns the export id.

        `limited` (unless False: admins over HTTP): `expires_in_hours` may not pass
        BULKJOBS_MAX_EXPORT_RETENTION_HOURS (InvalidInput), and the bytes of the owner's
        unexpired exports, this one included, may not pass BULKJOBS_USER_MAX_EXPORT_BYTES
        (ExportQuotaExceeded; the file is not kept)."""
        job = await self.get_job(job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        if export_format not in ("json", "csv", "zip"):
            raise InvalidInput("export_format", "must be one of json, csv, zip")
        hours = self.settings.bulk_export_retention_hours
        if expires_in_hours is not None:
            hours = check_expiry_hours(expires_in_hours, self._max_retention(limited))
        quota = self.settings.bulkjobs_user_max_export_bytes if limited else None
        export_id, fixed = new_export_id(job_id)
        relative = f"{job_id}/{export_id}.{file_extension(export_format)}"
        path = self.settings.bulk_export_path / relative
        written = await self._write_within(job.user_id, export_format, data, path, quota)
        now = utcnow()
        export = Export(
            id=export_id,
            job_id=job_id,
            user_id=job.user_id,
            format=export_format,
            filename=f"{_safe_prefix(filename_prefix)}_{now:%Y%m%d_%H%M%S}.{path.suffix[1:]}",
            relative_path=relative,
            content_type=written.content_type,
            size_bytes=written.size_bytes,
            sha256=written.sha256,
            created_at=now,
            expires_at=now + timedelta(hours=hours),
        )
        try:
            await (await self.store()).add_export(export, quota)
        except BaseException as exc:
            # A stage's export may already be registered under this id (an earlier attempt):
            # its file stays (unless refused: then no record may name it); an unregistered
            # one is removed by the sweep.
            if not fixed or isinstance(exc, ExportQuotaExceeded):
                path.unlink(missing_ok=True)
            raise
        metrics.EXPORTS.labels(export_format).inc()
        metrics.EXPORT_BYTES.labels(export_format).inc(written.size_bytes)
        await self._job_event(job_id, "export")
        return export_id

    def _max_retention(self, limited: bool) -> float:
        return self.settings.bulkjobs_max_export_retention_hours if limited else MAX_EXPORT_HOURS

    async def _write_within(
        self, user_id: str, export_format: ExportFormat, data: Any, path: Path, quota: int | None
    ) -> WrittenExport:
        """Write the export, stopping at the size cap or, under a quota, at the room the
        user has left (a first check; the store checks again as it registers the export)."""
        cap = self.settings.max_export_bytes
        held = 0
        if quota is not None:
            held = await (await self.store()).get_user_export_bytes(user_id)
            if held >= quota:
                raise ExportQuotaExceeded(user_id, quota, held, 1, at_least=True)
        room = cap if quota is None else min(cap, quota - held)
        try:
            return await asyncio.to_thread(write_export, export_format, data, path, room)
        except ExportTooLarge:
            if room < cap and quota is not None:
                raise ExportQuotaExceeded(user_id, quota, held, room + 1, at_least=True) from None
            raise

    async def get_export_info(self, export_id: str) -> Export | None:
        return await (await self.store()).get_export(export_id)

    async def get_export_file_path(self, export_id: str) -> Path | None:
        """The export's file, or None when it is unknown, expired or gone."""
        export = await self.get_export_info(export_id)
        if export is None or export.expires_at <= utcnow():
            return None
        path = self.export_path(export)
        return path if path.is_file() else None

    async def open_export(self, export_id: str) -> tuple[Export, BinaryIO] | None:
        """The export and its file opened for reading, or None when it is unknown, expired or
        gone. A file opened here stays readable after cleanup unlinks it (POSIX), so a
        download that starts also completes."""
        export = await self.get_export_info(export_id)
        if export is None or export.expires_at <= utcnow():
            return None
        try:
            handle = await asyncio.to_thread(self.export_path(export).open, "rb")
        except (FileNotFoundError, IsADirectoryError):
            return None
        return export, handle

    def export_path(self, export: Export) -> Path:
        return self.settings.bulk_export_path / export.relative_path

    async def cleanup_export(self, export_id: str) -> bool:
        """Delete the file, then the record; safe to repeat and to run concurrently."""
        export = await self.get_export_info(export_id)
        if export is None:
            return False
        self.export_path(export).unlink(missing_ok=True)
        return await (await self.store()).remove_export(export_id)

    async def cleanup_expired_exports(self) -> int:
        """Remove every expired export; returns how many records were removed."""
        store = await self.store()
        removed = 0
        while batch := await store.get_expired_exports(limit=100):
            for export in batch:
                self.export_path(export).unlink(missing_ok=True)
                removed += await store.remove_export(export.id)
            if len(batch) < 100:
                break
        return removed

    async def sweep_files(self, grace_s: float = SWEEP_GRACE_S) -> Swept:
        """Remove partial and unregistered export files and the working files of jobs that
        are gone or finished with no export left (see export_files)."""
        return await sweep(self.settings.bulk_export_path, await self.store(), grace_s)

    async def delete_job(self, job_id: str) -> JobDeletion:
        """Delete a finished job now: its container jobs, stages and exports, then its files
        (exports, stage outputs, fetched bodies). NotFound when there is no such job;
        Conflict, saying why, while it is pending or running (cancel it first)."""
        store = await self.store()
        total, steps = JobDeletion(done=False), 0
        while not total.done:
            try:
                step = await store.delete_job(job_id, DELETE_BATCH)
            except NotFound:
                if not steps:
                    raise
                # A step applied whose answer was lost, and it was the last one.
                step = JobDeletion(done=True)
            total, steps = _add(total, step), steps + 1
        swept = await asyncio.to_thread(remove_job_files, self.settings.bulk_export_path, job_id)
        log.info(
            "job deleted",
            extra={"job_id": job_id, "files": swept.files, "containers": total.container_jobs},
        )
        await self._job_event(job_id, "deleted")
        return total

    async def _delete_if_still_there(self, job_id: str) -> int:
        try:
            await self.delete_job(job_id)
        except NotFound:  # another process deleted it meanwhile
            return 0
        except Conflict as exc:  # its runner still holds it: the next sweep takes it
            log.info("retention: %s", exc)
            return 0
        return 1

    async def delete_expired_jobs(self, days: float | None = None) -> int:
        """Delete the jobs that finished more than `days` (BULKJOBS_JOB_RETENTION_DAYS)
        ago, at most RETENTION_SWEEP_MAX per call; returns how many went. 0 days: none (the
        setting's way of keeping jobs forever). A job another process deleted meanwhile, or
        whose runner still holds it, is skipped."""
        days = self.settings.bulkjobs_job_retention_days if days is None else days
        if days <= 0:  # retention is off
            return 0
        cutoff = utcnow() - timedelta(days=days)
        store = await self.store()
        deleted, seen = 0, set[str]()
        while deleted < RETENTION_SWEEP_MAX:
            batch = await store.get_finished_before(cutoff, limit=100)
            ids = [job_id for job_id in batch if job_id not in seen]
            if not ids:  # none, or only jobs that could not go this time
                break
            for job_id in ids:
                seen.add(job_id)
                deleted += await self._delete_if_still_there(job_id)
        return deleted


#: The longest an export may be kept, in hours (a year).
MAX_EXPORT_HOURS = 24 * 365


def check_expiry_hours(hours: float, most: float = MAX_EXPORT_HOURS) -> float:
    """expires_in_hours as given, or InvalidInput: it must be above 0 and at most `most`
    (BULKJOBS_MAX_EXPORT_RETENTION_HOURS for users, a year for admins; 0 would make an
    export that no one can download: leave it out for the default)."""
    if isinstance(hours, bool) or not isinstance(hours, int | float):
        raise InvalidInput("expires_in_hours", "must be a number of hours")
    if not 0 < hours <= most:  # NaN fails this too
        limit = "" if most == MAX_EXPORT_HOURS else " (BULKJOBS_MAX_EXPORT_RETENTION_HOURS)"
        raise InvalidInput("expires_in_hours", f"must be > 0 and <= {most:g}{limit}")
    return float(hours)


def _add(total: JobDeletion, step: JobDeletion) -> JobDeletion:
    return JobDeletion(
        done=step.done,
        container_jobs=total.container_jobs + step.container_jobs,
        stages=total.stages + step.stages,
        exports=total.exports + step.exports,
    )


def _safe_prefix(prefix: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in prefix)[:64]
    return cleaned or "export"


bulk_job_manager = BulkJobManager()
