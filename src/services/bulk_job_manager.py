"""BulkJobManager: staged bulk jobs, live progress and exports over any Store.

Application code uses the module-level `bulk_job_manager` as the usage guide shows; it reads
the settings and opens the store on first use, and `await bulk_job_manager.aclose()` (or the
app's lifespan) closes it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol, cast

import orjson

from src.config import Settings, get_settings
from src.services import metrics
from src.services.domain import (
    BulkJobStage,
    BulkJobStatus,
    Export,
    ExportFormat,
    Job,
    JobStats,
    NewJob,
    Priority,
    RateLimit,
    utcnow,
)
from src.services.errors import Conflict, InvalidInput, JobCancelled, NotFound, RateLimited
from src.services.exports import file_extension, write_export
from src.services.progress import ProgressWriter
from src.services.reports import JobReport, job_report
from src.services.store import open_store
from src.services.store.base import ContainerStore, Store

__all__ = [
    "BulkJobManager",
    "BulkJobStage",
    "BulkJobStatus",
    "bulk_job_manager",
]

log = logging.getLogger(__name__)

STAGE_NAMES = frozenset(stage.value for stage in BulkJobStage)


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


class JobEventHook(Protocol):
    """Told that a job changed (event: created, status, stage, export); the SSE streams use it."""

    async def __call__(self, job_id: str, event: str) -> None: ...


class BulkJobManager:
    """Creates, drives and reports on bulk jobs. One instance per process is enough."""

    def __init__(self, settings: Settings | None = None, store: Store | None = None) -> None:
        self._settings = settings
        self._store = store
        self._owns_store = store is None
        self._progress: ProgressWriter | None = None
        self._open_lock = asyncio.Lock()
        #: Awaited after each job write made through this manager; progress writes excepted.
        self.on_job_event: JobEventHook | None = None

    # -- lifecycle -------------------------------------------------------------------------

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

    async def container_store(self) -> ContainerStore:
        """The same store, seen through its container operations (both stores have them)."""
        return cast(ContainerStore, await self.store())

    async def progress_writer(self) -> ProgressWriter:
        if self._progress is None:
            self._progress = ProgressWriter(await self.store(), self.settings.progress_interval_s)
        return self._progress

    async def aclose(self) -> None:
        """Flush pending progress and close the store if this manager opened it."""
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

    # -- jobs ------------------------------------------------------------------------------

    async def create_bulk_job(
        self,
        job_type: str,
        user_id: str,
        job_data: dict[str, Any],
        stages: list[BulkJobStage] | list[str],
        estimated_duration_minutes: float | None = None,
        priority: Priority = "normal",
        job_id: str | None = None,
    ) -> str:
        """Create a pending job; raises RateLimited when the user is over the limit."""
        self.check_job_data(job_data)
        new = NewJob(
            job_type=job_type,
            user_id=user_id,
            job_data=job_data,
            stages=validate_stages(stages),
            priority=priority,
            estimated_duration_minutes=estimated_duration_minutes,
            job_id=job_id,
        )
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
        jobs = await store.get_user_jobs(user_id, wanted, job_type, limit)
        return [job_report(job) for job in jobs]

    async def cancel_job(self, job_id: str, reason: str = "cancelled by user") -> None:
        """Cancel a job; its runner notices at the next progress write or heartbeat."""
        job = await self.get_job(job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        if job.is_terminal:
            raise Conflict(f"job {job_id} is already {job.status}")
        await self.update_job_status(job_id, BulkJobStatus.CANCELLED, error_message=reason)
        if self._progress is not None:
            self._progress.discard_job(job_id)

    async def get_job_stats(self) -> JobStats:
        return await (await self.store()).get_job_stats()

    # -- stages ----------------------------------------------------------------------------

    async def start_stage(
        self, job_id: str, stage: BulkJobStage | str, items_total: int | None = None
    ) -> None:
        if items_total is not None and items_total < 0:
            raise InvalidInput("items_total", "must not be negative")
        await (await self.store()).start_stage(job_id, str(stage), items_total)
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
        status = writer.offer(job_id, name, progress, items_completed, items_failed, metadata)
        if status is None:
            status = await writer.write_now(job_id, name)
        if status is BulkJobStatus.CANCELLED:
            raise JobCancelled(f"job {job_id} was cancelled")

    async def complete_stage(
        self,
        job_id: str,
        stage: BulkJobStage | str,
        items_completed: int | None = None,
        items_failed: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        writer = await self.progress_writer()
        reported = writer.counts(job_id, str(stage))
        writer.discard(job_id, str(stage))
        if reported is not None:
            items_completed = reported[0] if items_completed is None else items_completed
            items_failed = reported[1] if items_failed is None else items_failed
        await (await self.store()).complete_stage(
            job_id, str(stage), items_completed, items_failed, metadata
        )
        await self._job_event(job_id, "stage")

    async def fail_stage(
        self,
        job_id: str,
        stage: BulkJobStage | str,
        error_message: str,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        writer = await self.progress_writer()
        await writer.flush(job_id, str(stage))
        writer.discard(job_id, str(stage))
        await (await self.store()).fail_stage(job_id, str(stage), error_message, metadata)
        await self._job_event(job_id, "stage")

    async def process_job_with_stages(
        self, job_id: str, stage_processors: Mapping[BulkJobStage | str, Any]
    ) -> JobReport | None:
        """Run the job's stages with these processors, under a lease, to the end."""
        from src.services.runner import JobRunner

        runner = JobRunner(self, owner=f"inline-{secrets.token_hex(4)}")
        await runner.run_job(job_id, {str(stage): fn for stage, fn in stage_processors.items()})
        return await self.get_job_status(job_id)

    # -- exports ---------------------------------------------------------------------------

    async def create_export(
        self,
        job_id: str,
        export_format: ExportFormat,
        data: Any,
        filename_prefix: str = "export",
        expires_in_hours: float | None = None,
    ) -> str:
        """Write `data` as a JSON, CSV or ZIP file for the job; returns the export id."""
        job = await self.get_job(job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        if export_format not in ("json", "csv", "zip"):
            raise InvalidInput("export_format", "must be one of json, csv, zip")
        export_id = secrets.token_urlsafe(18)
        relative = f"{job_id}/{export_id}.{file_extension(export_format)}"
        path = self.settings.bulk_export_path / relative
        written = await asyncio.to_thread(
            write_export, export_format, data, path, self.settings.max_export_bytes
        )
        now = utcnow()
        hours = expires_in_hours or self.settings.bulk_export_retention_hours
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
            await (await self.store()).add_export(export)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        metrics.EXPORTS.labels(export_format).inc()
        metrics.EXPORT_BYTES.labels(export_format).inc(written.size_bytes)
        await self._job_event(job_id, "export")
        return export_id

    async def get_export_info(self, export_id: str) -> Export | None:
        return await (await self.store()).get_export(export_id)

    async def get_export_file_path(self, export_id: str) -> Path | None:
        """The export's file, or None when it is unknown, expired or gone."""
        export = await self.get_export_info(export_id)
        if export is None or export.expires_at <= utcnow():
            return None
        path = self.export_path(export)
        return path if path.is_file() else None

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

    def remove_job_files(self, job_id: str) -> None:
        shutil.rmtree(self.settings.bulk_export_path / job_id, ignore_errors=True)


def _safe_prefix(prefix: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in prefix)[:64]
    return cleaned or "export"


bulk_job_manager = BulkJobManager()
