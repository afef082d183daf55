"""The job runner: runs a claimed job's stages under a lease, heartbeating while it works.

The same runner serves FastAPI background tasks, the server's in-process worker and
`bulkjobs worker` processes. A job whose runner died is claimed again after its lease expires
and resumes at its first stage that is not completed; each stage's output is kept as a file,
so later stages still see the output of stages finished before the crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import orjson

from src.services import metrics
from src.services.domain import (
    BulkJobStage,
    BulkJobStatus,
    Job,
    Stage,
    StageStatus,
    utcnow,
)
from src.services.errors import BulkJobError, Conflict, JobCancelled, StoreUnavailable

if TYPE_CHECKING:
    from src.services.bulk_job_manager import BulkJobManager

log = logging.getLogger(__name__)

EXPORT_STAGES = frozenset({BulkJobStage.EXPORT_PREPARATION, BulkJobStage.EXPORT_GENERATION})


class StageContext:
    """What a stage processor gets: the job, its data, progress reporting, earlier outputs."""

    def __init__(self, manager: BulkJobManager, job: Job, stage: str) -> None:
        self.manager = manager
        self.job = job
        self.job_id = job.id
        self.job_data = job.job_data
        self.stage = stage

    async def report(
        self,
        completed: int,
        failed: int = 0,
        total: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Report item counts; progress is derived from them when the total is known."""
        progress = (completed + failed) / total if total else 0.0
        await self.manager.update_stage_progress(
            self.job_id, self.stage, progress, completed, failed, metadata
        )

    async def start(self, items_total: int) -> None:
        """Set the stage's item total (the runner has already started the stage)."""
        await self.manager.start_stage(self.job_id, self.stage, items_total)

    def output(self, stage: BulkJobStage | str) -> Any:
        """The value an earlier stage's processor returned, or None."""
        return read_stage_output(self.manager, self.job_id, str(stage))


class ContextProcessor(Protocol):
    def __call__(self, ctx: StageContext, /) -> Awaitable[Any]: ...


GuideProcessor = Callable[[str, dict[str, Any]], Awaitable[Any]]
#: A processor takes a StageContext, or (job_id, job_data) as in the usage guide.
StageProcessor = ContextProcessor | GuideProcessor


def stage_output_path(manager: BulkJobManager, job_id: str, stage: str) -> Path:
    return manager.settings.bulk_export_path / job_id / "stages" / f"{stage}.json"


def read_stage_output(manager: BulkJobManager, job_id: str, stage: str) -> Any:
    path = stage_output_path(manager, job_id, stage)
    return orjson.loads(path.read_bytes()) if path.is_file() else None


def _write_stage_output(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_bytes(orjson.dumps(value, default=str))
    partial.replace(path)


async def call_processor(processor: StageProcessor, ctx: StageContext) -> Any:
    if _takes_context(processor):
        return await cast(ContextProcessor, processor)(ctx)
    return await cast(GuideProcessor, processor)(ctx.job_id, ctx.job_data)


def _takes_context(processor: Callable[..., Any]) -> bool:
    params = [
        p
        for p in inspect.signature(processor).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(params) == 1


def job_status_for_stage(stage: str) -> BulkJobStatus:
    if stage == BulkJobStage.INITIALIZATION:
        return BulkJobStatus.INITIALIZING
    if stage in EXPORT_STAGES:
        return BulkJobStatus.EXPORTING
    return BulkJobStatus.PROCESSING


class _StageFailed(Exception):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"stage {stage} failed: {message}")


class JobRunner:
    """Runs jobs under a lease held by `owner`."""

    def __init__(self, manager: BulkJobManager, owner: str, lease_s: float | None = None) -> None:
        self.manager = manager
        self.owner = owner
        self.lease_s = lease_s or manager.settings.bulkjobs_lease_seconds

    async def run_job(self, job_id: str, processors: Mapping[str, StageProcessor]) -> bool:
        """Claim one job by id and run it; False when someone else holds it."""
        store = await self.manager.store()
        job = await store.get_job(job_id)
        if job is None or job.is_terminal:
            return False
        claimed = await store.claim(self.owner, self.lease_s, [job.job_type], job_id=job_id)
        if not claimed:
            return False
        await self.run_claimed(claimed[0], processors)
        return True

    async def run_claimed(self, job: Job, processors: Mapping[str, StageProcessor]) -> None:
        """Run a job this runner has claimed, heartbeating until it ends."""
        work = asyncio.create_task(self._run_stages(job, processors), name=f"job-{job.id}")
        watcher = asyncio.create_task(self._watch(job.id, work), name=f"lease-{job.id}")
        try:
            await work
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this runner is shutting down; the lease is handed back below
            log.info("job %s stopped: cancelled or lease lost", job.id)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            (await self.manager.progress_writer()).discard_job(job.id)
            await self._release(job.id)

    async def _release(self, job_id: str) -> None:
        try:
            await (await self.manager.store()).release(job_id, self.owner)
        except BulkJobError:
            log.warning("could not release job %s; its lease will expire", job_id, exc_info=True)

    async def _watch(self, job_id: str, work: asyncio.Task[None]) -> None:
        """Renew the lease; stop the work when the job is cancelled or the lease is lost."""
        store = await self.manager.store()
        interval = min(max(self.manager.settings.progress_interval_s, 0.05), self.lease_s / 3)
        while not work.done():
            await asyncio.sleep(interval)
            try:
                status = await store.heartbeat(job_id, self.owner, self.lease_s)
            except Conflict:
                log.warning("lease on job %s lost; stopping", job_id)
                work.cancel()
                return
            except StoreUnavailable:
                log.warning("heartbeat for job %s failed; retrying", job_id, exc_info=True)
                continue
            if status == BulkJobStatus.CANCELLED:
                work.cancel()
                return

    async def _run_stages(self, job: Job, processors: Mapping[str, StageProcessor]) -> None:
        try:
            for stage in job.stages:
                if stage.status in (StageStatus.COMPLETED, StageStatus.SKIPPED):
                    continue
                if stage.status == StageStatus.FAILED:
                    raise _StageFailed(stage.name, stage.error_message or "failed earlier")
                await self._run_stage(job, stage.name, processors.get(stage.name))
            await self.manager.update_job_status(job.id, BulkJobStatus.COMPLETED)
        except JobCancelled:
            log.info("job %s cancelled", job.id, extra={"job_id": job.id, "user_id": job.user_id})
        except _StageFailed as exc:
            await self._fail_job(job.id, str(exc))

    async def _run_stage(self, job: Job, stage: str, processor: StageProcessor | None) -> None:
        if processor is None:
            raise _StageFailed(stage, "no processor is registered for it")
        await self._enter_stage(job, stage)
        ctx = StageContext(self.manager, job, stage)
        try:
            output = await call_processor(processor, ctx)
        except (JobCancelled, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.warning(
                "stage %s of job %s raised",
                stage,
                job.id,
                exc_info=True,
                extra={"job_id": job.id, "stage": stage, "user_id": job.user_id},
            )
            await self._record_stage_failure(job.id, stage, exc)
            raise _StageFailed(stage, f"{type(exc).__name__}: {exc}") from exc
        if output is not None:
            path = stage_output_path(self.manager, job.id, stage)
            await asyncio.to_thread(_write_stage_output, path, output)
        await self._finish_stage(job.id, stage)

    async def _enter_stage(self, job: Job, stage: str) -> None:
        current = await self.manager.get_job(job.id)
        wanted = job_status_for_stage(stage)
        if current is not None and current.status == BulkJobStatus.CANCELLED:
            raise JobCancelled(job.id)
        if current is not None and current.status != wanted:
            await self.manager.update_job_status(job.id, wanted)
        await self.manager.start_stage(job.id, stage)

    async def _record_stage_failure(self, job_id: str, stage: str, exc: Exception) -> None:
        with contextlib.suppress(Conflict):  # the processor may have failed the stage itself
            await self.manager.fail_stage(
                job_id, stage, f"{type(exc).__name__}: {exc}", {"error_type": type(exc).__name__}
            )

    async def _finish_stage(self, job_id: str, stage: str) -> None:
        """Complete the stage unless the processor already completed or failed it."""
        job = await self.manager.get_job(job_id)
        current = job.stage(stage) if job else None
        if current is None or current.status == StageStatus.PROCESSING:
            await self.manager.complete_stage(job_id, stage)
            if job is not None and current is not None:
                _observe_stage(job.job_type, current)
        elif current.status == StageStatus.FAILED:
            raise _StageFailed(stage, current.error_message or "failed")

    async def _fail_job(self, job_id: str, message: str) -> None:
        with contextlib.suppress(Conflict):  # cancelled meanwhile: cancellation wins
            await self.manager.update_job_status(
                job_id, BulkJobStatus.FAILED, error_message=message
            )


def _observe_stage(job_type: str, stage: Stage) -> None:
    """Metrics for a stage this runner completed (counts as of its last progress write)."""
    if stage.started_at is not None:
        seconds = (utcnow() - stage.started_at).total_seconds()
        metrics.STAGE_SECONDS.labels(job_type, stage.name).observe(max(0.0, seconds))
    metrics.ITEMS.labels(job_type, stage.name, "completed").inc(stage.items_completed)
    metrics.ITEMS.labels(job_type, stage.name, "failed").inc(stage.items_failed)
