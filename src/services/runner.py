"""The job runner: carries one claimed bulk job through its stages, under its lease.

A runner works through a narrow port (`JobPort`: the store, the progress writer, the event
hook and the stage output directory), never through the BulkJobManager, so the manager and
every worker can use it without an import cycle. The Scheduler's `BulkJobSource` claims jobs
and hands each to `JobRunner.run_claimed`; the manager's `process_job_with_stages` does the
same through a Scheduler of its own.

Per job: the claim is the one read of it; each stage is one `start_stage` (the store moves
the job with it), the processor's progress writes, and one `complete_stage` (the last one
completes the job, in the store's own transaction). A job whose runner died is claimed
again after its lease expires and resumes at its first stage that is not completed; each
stage's output is kept as a file, so later stages still see the output of stages finished
before the crash. A runner that fails
outside the processors (a store error, an output it cannot serialize) hands the job back as
a failed attempt: it is retried after a back-off and failed with that error once its
attempts are used up. A processor that raises fails its stage and the job, unless the job
type gave the stage a retry policy (StageRetryPolicy) and the error is transient: then the
runner starts the stage again after a back-off, within the policy's attempts, and the
stage's metadata says how many attempts it took and why the last one failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, cast

import httpx
import orjson

from src.services import metrics
from src.services.backoff import AttemptPolicy, backoff
from src.services.domain import (
    TERMINAL_STAGE_STATUSES,
    BulkJobStage,
    BulkJobStatus,
    ExportFormat,
    Failure,
    Job,
    Stage,
    StageStatus,
)
from src.services.errors import Conflict, JobCancelled, StoreAuthError, StoreUnavailable
from src.services.export_files import stage_exports
from src.services.leases import LeaseWatch, run_under_lease
from src.services.progress import ProgressWriter
from src.services.store.base import Store

if TYPE_CHECKING:
    from src.config import Settings
    from src.services.containers.factory import ExecutorFactory

log = logging.getLogger(__name__)

#: Stage metadata key under which a stage keeps its first failed items and why each failed:
#: a list of {"item": str, "error": str}. Every built-in job type records them this way.
FAILED_ITEMS = "failed_items"
#: Failed items a stage keeps with their reasons (the export has every item's outcome).
MAX_FAILED_ITEMS = 20
#: Characters of a failed item's name a stage keeps (a longer one is cut to these).
MAX_ITEM_CHARS = 300
#: Stage metadata keys of a stage run under a retry policy: the attempts it took so far and
#: the error of the last one that failed (kept when a later attempt succeeds).
ATTEMPTS = "attempts"
LAST_ERROR = "last_error"

#: The errors a stage retry policy retries by default: the store out of reach (not refusing
#: our credentials, which retrying does not fix) and the network failing under a request
#: (httpx transport errors: connect, read and write errors, timeouts; and the builtin
#: ConnectionError and TimeoutError that sockets and asyncio raise).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    StoreUnavailable,
    httpx.TransportError,
    ConnectionError,
    TimeoutError,
)
NEVER_TRANSIENT: tuple[type[BaseException], ...] = (StoreAuthError,)


@dataclass(frozen=True)
class StageRetryPolicy:
    """How the runner retries a stage whose processor raised a transient error: up to
    `attempts` attempts in all, attempt n + 1 after backoff(n - 1, backoff_s) seconds."""

    attempts: int = 3
    backoff_s: float = 0.5
    #: What counts as transient (and StoreAuthError never does).
    transient: tuple[type[BaseException], ...] = TRANSIENT_ERRORS

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("a stage retry policy needs at least 1 attempt")
        if not self.backoff_s > 0:
            raise ValueError("a stage retry policy needs a back-off above 0 s")

    def retries(self, exc: BaseException, attempt: int) -> bool:
        """Whether attempt number `attempt`, which raised `exc`, gets another."""
        if attempt >= self.attempts or isinstance(exc, NEVER_TRANSIENT):
            return False
        return isinstance(exc, self.transient)

    def delay(self, attempt: int) -> float:
        """Seconds before the attempt after attempt number `attempt`."""
        return backoff(attempt - 1, self.backoff_s)


class JobEventHook(Protocol):
    """Told that a job changed (event: created, status, stage, export); the SSE streams use it."""

    async def __call__(self, job_id: str, event: str) -> None: ...


class StageServices(Protocol):
    """What stage processors may use besides their context (`ctx.manager`): the manager
    provides it. The runner itself never calls it."""

    @property
    def settings(self) -> Settings: ...

    async def store(self) -> Store: ...

    async def executors(self) -> ExecutorFactory: ...

    async def close_executors(self) -> None: ...

    async def get_job(self, job_id: str) -> Job | None: ...

    async def create_export(
        self,
        job_id: str,
        export_format: ExportFormat,
        data: Any,
        filename_prefix: str = "export",
        expires_in_hours: float | None = None,
    ) -> str: ...


@dataclass(frozen=True)
class JobPort:
    """The narrow port a runner carries one claimed job through."""

    store: Store
    progress: ProgressWriter
    on_event: JobEventHook
    #: Stage outputs go to <outputs>/<job id>/stages/<stage>.json (BULK_EXPORT_PATH).
    outputs: Path
    #: Handed to processors as `ctx.manager`.
    services: StageServices


class StageContext:
    """What a stage processor gets: the job, its data, progress reporting, earlier outputs."""

    def __init__(self, port: JobPort, job: Job, stage: str) -> None:
        self.port = port
        self.manager = port.services
        self.job = job
        self.job_id = job.id
        self.job_data = job.job_data
        self.stage = stage
        self._failed_items: list[dict[str, str]] = []
        self._failed_items_sent = 0

    async def report(
        self,
        completed: int,
        failed: int = 0,
        total: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Report item counts; progress is derived from them when the total is known.
        Failed items recorded since the last report travel in the stage's metadata."""
        progress = (completed + failed) / total if total else 0.0
        if len(self._failed_items) != self._failed_items_sent:
            metadata = {**(metadata or {}), FAILED_ITEMS: list(self._failed_items)}
            self._failed_items_sent = len(self._failed_items)
        await self.port.progress.update(
            self.job_id, self.stage, progress, completed, failed, metadata
        )

    def item_failed(self, item: object, reason: str) -> None:
        """Record that `item` failed and why; the first MAX_FAILED_ITEMS are kept in the
        stage's metadata (under FAILED_ITEMS), sent with the next report."""
        if len(self._failed_items) < MAX_FAILED_ITEMS:
            self._failed_items.append({"item": str(item)[:MAX_ITEM_CHARS], "error": reason[:1000]})

    async def start(self, items_total: int) -> None:
        """Set the stage's item total (the runner has already started the stage)."""
        await self.port.store.start_stage(self.job_id, self.stage, items_total)
        await self.port.on_event(self.job_id, "stage")

    async def output(self, stage: BulkJobStage | str) -> Any:
        """The value an earlier stage's processor returned, or None (read and decoded in a
        worker thread: an output may be large)."""
        return await asyncio.to_thread(
            read_stage_output, self.port.outputs, self.job_id, str(stage)
        )


def recorded_failed_items(stage: Stage) -> list[str] | None:
    """The items the stage recorded as failed (item_failed), when it recorded every one of
    them whole: no more than it counted, none cut to MAX_ITEM_CHARS; else None."""
    entries = stage.metadata.get(FAILED_ITEMS, [])
    if not isinstance(entries, list) or len(entries) < stage.items_failed:
        return None
    items = [str(entry.get("item", "")) for entry in entries if isinstance(entry, dict)]
    if len(items) != len(entries) or any(len(item) >= MAX_ITEM_CHARS for item in items):
        return None
    return items


class ContextProcessor(Protocol):
    def __call__(self, ctx: StageContext, /) -> Awaitable[Any]: ...


GuideProcessor = Callable[[str, dict[str, Any]], Awaitable[Any]]
#: A processor takes a StageContext, or (job_id, job_data) as in the usage guide.
StageProcessor = ContextProcessor | GuideProcessor


def stage_output_path(outputs: Path, job_id: str, stage: str) -> Path:
    return outputs / job_id / "stages" / f"{stage}.json"


def read_stage_output(outputs: Path, job_id: str, stage: str) -> Any:
    path = stage_output_path(outputs, job_id, stage)
    return orjson.loads(path.read_bytes()) if path.is_file() else None


def _write_stage_output(path: Path, value: Any) -> None:
    data = orjson.dumps(value, default=str)  # before any file exists: a bad value leaves none
    path.parent.mkdir(parents=True, exist_ok=True)
    partial_file = path.with_suffix(".tmp")
    partial_file.write_bytes(data)
    partial_file.replace(path)


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


class StageOutputError(Exception):
    """A processor returned a value that cannot be kept for the next stages."""


class _StageFailed(Exception):
    def __init__(self, stage: str, message: str, recorded: bool = False) -> None:
        super().__init__(f"stage {stage} failed: {message}")
        #: The store already failed the job with the stage (a fatal fail_stage).
        self.recorded = recorded


class JobRunner:
    """Runs claimed jobs under leases held by `owner`."""

    def __init__(
        self,
        port: JobPort,
        owner: str,
        lease_s: float,
        heartbeat_s: float | None = None,
        policy: AttemptPolicy | None = None,
    ) -> None:
        self.port = port
        self.owner = owner
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s or lease_s / 3
        self.policy = policy or AttemptPolicy()

    async def run_claimed(
        self,
        job: Job,
        processors: Mapping[str, StageProcessor],
        retries: Mapping[str, StageRetryPolicy] | None = None,
    ) -> None:
        """Run a job this runner has claimed, renewing its lease, to its end, a failed
        attempt, or a hand-back when this runner is stopped; a stage named in `retries` is
        retried under its policy when its processor raises a transient error."""
        watch = LeaseWatch(
            renew=partial(self.port.store.heartbeat, job.id, self.owner, self.lease_s),
            interval_s=self.heartbeat_s,
            stop_on={BulkJobStatus.CANCELLED},
            label=f"job {job.id}",
        )
        failure: Failure | None = None
        ended = False
        try:
            run = self._run_stages(job, processors, retries or {})
            ended = bool(await run_under_lease(run, watch))
        except Exception as exc:  # outside the processors: a failed attempt, not a crash loop
            log.warning("job %s: attempt %d failed", job.id, job.attempts, exc_info=True)
            failure = self.policy.failure(job.attempts, f"{type(exc).__name__}: {exc}")
        finally:
            self.port.progress.discard_job(job.id)
            if not ended:
                await self._release(job.id, failure)

    async def _release(self, job_id: str, failure: Failure | None) -> None:
        # Shielded: a runner being cancelled (shutting down) still hands its lease back.
        try:
            await asyncio.shield(self.port.store.release(job_id, self.owner, failure))
        except Exception:
            log.warning("could not release job %s; its lease will expire", job_id, exc_info=True)
        if failure is not None:
            await self.port.on_event(job_id, "status")

    async def _run_stages(
        self,
        job: Job,
        processors: Mapping[str, StageProcessor],
        retries: Mapping[str, StageRetryPolicy],
    ) -> bool:
        """True once the job has ended (completed, failed, or cancelled)."""
        try:
            # The store completes the job with its last stage; a stage that failed without
            # failing the job is finished too.
            left = [stage for stage in job.stages if stage.status not in TERMINAL_STAGE_STATUSES]
            if not left:  # stored before stages moved their job: it ended between the two
                await self._set_status(job.id, BulkJobStatus.COMPLETED)
            for stage in left:
                processor = processors.get(stage.name)
                await self._run_stage(job, stage.name, processor, retries.get(stage.name))
        except JobCancelled:
            log.info("job %s cancelled", job.id, extra={"job_id": job.id, "user_id": job.user_id})
        except _StageFailed as exc:
            if not exc.recorded:
                await self._set_status(job.id, BulkJobStatus.FAILED, str(exc))
        return True

    async def _run_stage(
        self,
        job: Job,
        stage: str,
        processor: StageProcessor | None,
        retry: StageRetryPolicy | None,
    ) -> None:
        if processor is None:
            raise _StageFailed(stage, "no processor is registered for it")
        await self._enter_stage(job, stage)
        started = time.monotonic()
        output = await self._attempt_stage(job, stage, processor, retry)
        if output is not None:
            await self._keep_output(job.id, stage, output)
        await self._finish_stage(job, stage, started)

    async def _attempt_stage(
        self, job: Job, stage: str, processor: StageProcessor, retry: StageRetryPolicy | None
    ) -> Any:
        """The processor's output; a transient error is retried under `retry`, any other
        error (or the last attempt's) fails the stage."""
        attempt = 1
        while True:
            ctx = StageContext(self.port, job, stage)
            try:
                with stage_exports(job.id, stage):  # its exports get ids fixed per stage
                    return await call_processor(processor, ctx)
            except (JobCancelled, asyncio.CancelledError):
                raise
            except Exception as exc:
                if retry is None or not retry.retries(exc, attempt):
                    await self._stage_raised(job, stage, exc, attempt if retry else None)
                await self._retry_later(job, stage, exc, attempt, retry)
                attempt += 1

    async def _retry_later(
        self, job: Job, stage: str, exc: Exception, attempt: int, retry: StageRetryPolicy
    ) -> None:
        """Record the failed attempt in the stage, wait out the back-off, start it again."""
        delay = retry.delay(attempt)
        log.warning(
            "stage %s of job %s: attempt %d of %d raised %s; retrying in %.2f s",
            stage,
            job.id,
            attempt,
            retry.attempts,
            type(exc).__name__,
            delay,
            extra={"job_id": job.id, "stage": stage, "user_id": job.user_id},
        )
        progress = {ATTEMPTS: attempt + 1, LAST_ERROR: _describe(exc)}
        await self.port.progress.write_metadata(job.id, stage, progress)
        await asyncio.sleep(delay)
        await self._enter_stage(job, stage)  # processing -> processing: a restart

    async def _stage_raised(
        self, job: Job, stage: str, exc: Exception, attempt: int | None
    ) -> NoReturn:
        """Fail the stage (and the job) with the processor's error."""
        log.warning(
            "stage %s of job %s raised",
            stage,
            job.id,
            exc_info=True,
            extra={"job_id": job.id, "stage": stage, "user_id": job.user_id},
        )
        extra = {} if attempt is None else {ATTEMPTS: attempt, LAST_ERROR: _describe(exc)}
        recorded = await self._record_stage_failure(job.id, stage, exc, extra)
        raise _StageFailed(stage, _describe(exc), recorded) from exc

    async def _keep_output(self, job_id: str, stage: str, output: Any) -> None:
        path = stage_output_path(self.port.outputs, job_id, stage)
        try:
            await asyncio.to_thread(_write_stage_output, path, output)
        except TypeError as exc:  # orjson's JSONEncodeError: too deep, an int past 64 bits
            raise StageOutputError(
                f"the output of stage {stage} cannot be stored as JSON: {exc}"
            ) from exc

    async def _enter_stage(self, job: Job, stage: str) -> None:
        """Start the stage; the store moves the job to the stage's status in the same
        transaction (and refuses a job that has ended)."""
        try:
            await self.port.store.start_stage(job.id, stage)
        except Conflict:
            await self._raise_if_cancelled(job.id)
            raise
        self.port.progress.started(job.id, stage)
        await self.port.on_event(job.id, "stage")

    async def _raise_if_cancelled(self, job_id: str) -> None:
        current = await self.port.store.get_job(job_id)
        if current is not None and current.status == BulkJobStatus.CANCELLED:
            raise JobCancelled(f"job {job_id} was cancelled")

    async def _record_stage_failure(
        self, job_id: str, stage: str, exc: Exception, extra: dict[str, Any]
    ) -> bool:
        """Fail the stage, and with it the job; False when the processor had already ended
        the stage itself."""
        metadata = {"error_type": type(exc).__name__, **extra}
        try:
            await self.port.progress.fail_stage(job_id, stage, _describe(exc), metadata)
        except Conflict:
            return False
        await self.port.on_event(job_id, "stage")
        return True

    async def _finish_stage(self, job: Job, stage: str, started: float) -> None:
        """Complete the stage unless the processor already completed or failed it (then the
        store refuses, and one read says which). A stage the processor failed without
        failing the job (fatal=False) lets the job go on."""
        try:
            counts = await self.port.progress.complete_stage(job.id, stage)
        except Conflict:
            current = await self.port.store.get_job(job.id)
            done = current.stage(stage) if current else None
            if current is not None and current.status == BulkJobStatus.CANCELLED:
                raise JobCancelled(f"job {job.id} was cancelled") from None
            if done is not None and done.status == StageStatus.FAILED:
                if current is not None and current.status == BulkJobStatus.FAILED:
                    raise _StageFailed(stage, done.error_message or "failed", True) from None
                return
            if done is None or done.status != StageStatus.COMPLETED:
                raise
            return
        await self.port.on_event(job.id, "stage")
        _observe_stage(job.job_type, stage, time.monotonic() - started, counts)

    async def _set_status(
        self, job_id: str, status: BulkJobStatus, error_message: str | None = None
    ) -> None:
        """The job status moves the runner makes itself (the store moves the job with its
        stages otherwise): failed when a stage failed outside the store's rules, completed
        for a job stored before stages moved their job. A job that ended meanwhile
        (cancelled) keeps its status: cancellation wins."""
        with contextlib.suppress(Conflict):
            await self.port.store.update_status(job_id, status, None, error_message)
            await self.port.on_event(job_id, "status")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _observe_stage(
    job_type: str, stage: str, seconds: float, counts: tuple[int | None, int | None]
) -> None:
    """Metrics for a stage this runner completed."""
    metrics.STAGE_SECONDS.labels(job_type, stage).observe(max(0.0, seconds))
    metrics.ITEMS.labels(job_type, stage, "completed").inc(counts[0] or 0)
    metrics.ITEMS.labels(job_type, stage, "failed").inc(counts[1] or 0)
