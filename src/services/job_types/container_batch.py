"""Built-in job type `container_batch`: one container job per item, results exported.

job_data: {"image": "...", "command": "process {item}", "items": [...], "executor_type":
"local", "concurrency": 4, "export_format": "csv", ...limits}. Each item reaches its
container as $ITEM (JSON for objects and lists) and $ITEM_INDEX, and in the command where it
says {item} (shell-quoted) or {index}. The processing stage keeps at most `concurrency`
container jobs unfinished, counts completed and failed items into its progress, and collects
each item's exit code, duration and output (parsed as JSON when it is JSON). The export
writes those rows as CSV, JSON, or a ZIP that also holds every item's logs.

Container job ids are derived from the bulk job id and the item index, so a stage resumed
after a worker died finds the jobs it already started instead of starting them twice.
Cancelling the bulk job cancels its unfinished container jobs and stops their containers.

A retry of the failed items runs the items whose container job did not complete (failed,
timed out or cancelled) again, with the job's other settings; each keeps its index from the
first job (`item_indexes`), so {index} and $ITEM_INDEX name the same item as before.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from src.services.containers.service import ContainerJobService
from src.services.domain import BulkJobStage, BulkJobStatus, Job
from src.services.domain.containers import (
    ENV_KEY,
    ContainerJob,
    ContainerJobStatus,
    ExecutorType,
    ExitRetryPolicy,
)
from src.services.errors import InvalidInput
from src.services.runner import StageContext, StageRetryPolicy, StageServices
from src.services.worker.sources import CONTAINER_JOB

log = logging.getLogger(__name__)

NAME = "container_batch"
STAGES = [
    BulkJobStage.INITIALIZATION,
    BulkJobStage.CONTENT_PROCESSING,
    BulkJobStage.EXPORT_GENERATION,
]
MAX_ITEMS = 10_000
#: Largest slice of ids read from the store at once.
READ_CHUNK = 500
#: Log bytes a ZIP export includes at most (they are in memory until written).
ZIP_LOG_BUDGET = 200 * 1024 * 1024
POLL_S = (0.05, 1.0)


class ContainerBatchData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str = Field(min_length=1, max_length=500)
    #: Shell command; {item} becomes the shell-quoted item, {index} its position.
    command: str = Field(min_length=1, max_length=10_000)
    items: list[Any] = Field(min_length=1, max_length=MAX_ITEMS)
    executor_type: ExecutorType | None = None
    #: A host id or name; routing picks one when absent.
    host: str | None = Field(None, max_length=100)
    concurrency: int = Field(4, ge=1, le=100)
    memory_limit: int | None = Field(None, gt=0, le=1_048_576)
    cpu_limit: float | None = Field(None, ge=0.1, le=32)
    timeout_seconds: int = Field(600, gt=0, le=24 * 3600)
    max_retries: int = Field(0, ge=0, le=10)
    #: Each item's container runs again after one of these exits (its own budget).
    exit_retry: ExitRetryPolicy | None = None
    environment: dict[str, str] = Field(default_factory=dict, max_length=100)
    export_format: Literal["csv", "json", "zip"] = "csv"
    #: Set by the service for a non-admin's job (whatever the request said): its items
    #: may only run on hosts that isolate them.
    isolated_only: bool = False
    #: Each item's index, when not its position: a retry keeps the first job's indexes.
    item_indexes: list[int] | None = Field(None, min_length=1, max_length=MAX_ITEMS)

    def index(self, position: int) -> int:
        """The index of the item at `position` ({index}, $ITEM_INDEX, the export's rows)."""
        return position if self.item_indexes is None else self.item_indexes[position]


def validate(job_data: dict[str, Any]) -> dict[str, Any]:
    try:
        data = ContainerBatchData.model_validate(job_data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidInput(f"job_data.{where}", first["msg"]) from None
    if not data.image.strip():
        raise InvalidInput("job_data.image", "an image is required")
    if data.item_indexes is not None and len(data.item_indexes) != len(data.items):
        raise InvalidInput("job_data.item_indexes", "must give one index per item")
    if any(index < 0 for index in data.item_indexes or []):
        raise InvalidInput("job_data.item_indexes", "indexes must not be negative")
    for index, item in enumerate(data.items):
        if _breaks_line(item_text(item)):  # it travels as one KEY=value line
            raise InvalidInput(f"job_data.items.{index}", "may not contain a line break")
    for key, value in data.environment.items():
        if not ENV_KEY.match(key):
            raise InvalidInput("job_data.environment", f"{key!r} is not a variable name")
        if _breaks_line(value):
            raise InvalidInput(f"job_data.environment.{key}", "may not contain a line break")
    return data.model_dump(exclude_none=True)


def _breaks_line(text: str) -> bool:
    """Whether str.splitlines would split it (\r, \u2028 and friends, not only \n)."""
    return len(f"{text}x".splitlines()) > 1


def item_text(item: Any) -> str:
    return item if isinstance(item, str) else orjson.dumps(item).decode()


def render_command(template: str, item: Any, index: int) -> str:
    # str.replace, not str.format: shell commands are full of braces.
    return template.replace("{item}", shlex.quote(item_text(item))).replace("{index}", str(index))


def container_job_id(bulk_job_id: str, index: int) -> str:
    return f"{bulk_job_id}-{index:05d}"


async def authorize(
    services: StageServices, job_data: dict[str, Any], user: str, trusted: bool
) -> dict[str, Any]:
    """For an untrusted (non-admin) caller: refuse hosts without isolation now, and mark the
    job so its stages route only to isolated hosts too."""
    if trusted:
        return job_data
    data = ContainerBatchData.model_validate(job_data)
    service = ContainerJobService(services)
    (job,) = await _prepare(service, "check", data, [0], user, trusted=False)
    return job_data | {"executor_type": job.executor_type, "isolated_only": True}


async def initialize(ctx: StageContext) -> None:
    """Check that a host can take the jobs before any is created."""
    data = ContainerBatchData.model_validate(ctx.job_data)
    await ctx.start(1)
    await _prepare(ContainerJobService(ctx.manager), ctx.job_id, data, [0], ctx.job.user_id)
    await ctx.report(1, total=1)


async def run_items(ctx: StageContext) -> list[dict[str, Any]]:
    data = ContainerBatchData.model_validate(ctx.job_data)
    service = ContainerJobService(ctx.manager)
    batch = _Batch(ctx, service, data)
    try:
        await batch.run()
    except BaseException:  # cancelled (CancelledError or JobCancelled) or failed
        await asyncio.shield(batch.cancel_if_job_cancelled())
        raise
    return batch.rows()


async def export(ctx: StageContext) -> dict[str, str]:
    data = ContainerBatchData.model_validate(ctx.job_data)
    rows: list[dict[str, Any]] = await ctx.output(BulkJobStage.CONTENT_PROCESSING) or []
    await ctx.start(1)
    payload: Any = rows
    if data.export_format == "zip":
        payload = await _zip_members(ContainerJobService(ctx.manager), rows)
    export_id = await ctx.manager.create_export(
        ctx.job_id, data.export_format, payload, filename_prefix=NAME
    )
    await ctx.report(1, total=1)
    return {"export_id": export_id}


#: Statuses of an item's container job that make the item a failed one.
FAILED_STATUSES = frozenset(
    {ContainerJobStatus.FAILED, ContainerJobStatus.TIMEOUT, ContainerJobStatus.CANCELLED}
)


async def retry_data(services: StageServices, job: Job) -> dict[str, Any] | None:
    """The items whose container job ended without completing, with the job's other
    settings and each item's index from this job (read from the store: every item's
    container job is kept with its outcome)."""
    data = ContainerBatchData.model_validate(job.job_data)
    store = await ContainerJobService(services).store()
    ids = [container_job_id(job.id, position) for position in range(len(data.items))]
    position = {job_id: index for index, job_id in enumerate(ids)}
    failed: list[int] = []
    for start in range(0, len(ids), READ_CHUNK):
        for item_job in await store.container_get_many(ids[start : start + READ_CHUNK]):
            if item_job.status in FAILED_STATUSES:
                failed.append(position[item_job.id])
    if not failed:
        return None
    failed.sort()
    return data.model_dump(exclude_none=True) | {
        "items": [data.items[index] for index in failed],
        "item_indexes": [data.index(index) for index in failed],
    }


PROCESSORS = {
    BulkJobStage.INITIALIZATION: initialize,
    BulkJobStage.CONTENT_PROCESSING: run_items,
    BulkJobStage.EXPORT_GENERATION: export,
}
AUTHORIZE = authorize
#: Its processing stage creates container jobs: they must run too.
KINDS = (CONTAINER_JOB,)
RETRY_DATA = retry_data
#: A store out of reach for a moment does not fail the job: the stage starts again, and a
#: processing stage started again adopts the container jobs it had already created.
STAGE_RETRIES = {
    stage: StageRetryPolicy(attempts=3, backoff_s=1.0)
    for stage in (
        BulkJobStage.INITIALIZATION,
        BulkJobStage.CONTENT_PROCESSING,
        BulkJobStage.EXPORT_GENERATION,
    )
}


class _Batch:
    """The processing stage: keeps `concurrency` container jobs in flight until all end."""

    def __init__(self, ctx: StageContext, service: ContainerJobService, data: ContainerBatchData):
        self.ctx, self.service, self.data = ctx, service, data
        self.total = len(data.items)
        self.ids = [container_job_id(ctx.job_id, index) for index in range(self.total)]
        #: Export rows of finished items (not the jobs: their logs would add up).
        self.finished: dict[int, dict[str, Any]] = {}
        self.in_flight: dict[int, ContainerJob] = {}

    async def run(self) -> None:
        await self.ctx.start(self.total)
        await self._adopt_existing()
        next_index = 0
        delay = POLL_S[0]
        while len(self.finished) < self.total:
            started = await self._fill(next_index)
            next_index += started
            changed = await self._poll()
            await self._report()
            delay = POLL_S[0] if changed or started else min(delay * 2, POLL_S[1])
            if len(self.finished) < self.total:
                await asyncio.sleep(delay)

    async def _adopt_existing(self) -> None:
        """A resumed stage: jobs created by an earlier attempt are watched, not recreated."""
        store = await self.service.store()
        position = {job_id: index for index, job_id in enumerate(self.ids)}
        for start in range(0, self.total, READ_CHUNK):
            for job in await store.container_get_many(self.ids[start : start + READ_CHUNK]):
                index = position[job.id]
                if job.is_terminal_status:
                    self._finish(index, job)
                else:
                    self.in_flight[index] = job

    async def _fill(self, next_index: int) -> int:
        """Create jobs for free slots, skipping indexes adopted earlier; returns the advance."""
        free = self.data.concurrency - len(self.in_flight)
        indexes: list[int] = []
        position = next_index
        while len(indexes) < free and position < self.total:
            if position not in self.finished and position not in self.in_flight:
                indexes.append(position)
            position += 1
        if not indexes:
            return position - next_index if free > 0 else 0
        jobs = await _prepare(
            self.service, self.ctx.job_id, self.data, indexes, self.ctx.job.user_id
        )
        await (await self.service.store()).container_create_batch(jobs)
        for index, job in zip(indexes, jobs, strict=True):
            self.in_flight[index] = job
        return position - next_index

    async def _poll(self) -> bool:
        if not self.in_flight:
            return False
        store = await self.service.store()
        current = await store.container_get_many([job.id for job in self.in_flight.values()])
        changed = False
        by_id = {job.id: index for index, job in self.in_flight.items()}
        for job in current:
            if job.is_terminal_status:
                index = by_id[job.id]
                del self.in_flight[index]
                self._finish(index, job)
                changed = True
        return changed

    def _finish(self, index: int, job: ContainerJob) -> None:
        row = _row(self.data.index(index), self.data.items[index], job)
        self.finished[index] = row
        if row["status"] != "completed":
            exit_code = "" if job.exit_code is None else f", exit code {job.exit_code}"
            self.ctx.item_failed(row["item"], row["error"] or f"{row['status']}{exit_code}")

    async def _report(self) -> None:
        completed = sum(1 for row in self.finished.values() if row["status"] == "completed")
        await self.ctx.report(completed, len(self.finished) - completed, self.total)

    async def cancel_if_job_cancelled(self) -> None:
        """On cancellation of the bulk job (not a worker shutting down), stop every
        container job it started."""
        job = await self.ctx.manager.get_job(self.ctx.job_id)
        if job is not None and job.status == BulkJobStatus.CANCELLED:
            await self.service.cancel_for_bulk_job(self.ctx.job_id)

    def rows(self) -> list[dict[str, Any]]:
        return [self.finished[index] for index in range(self.total)]


async def _prepare(
    service: ContainerJobService,
    bulk_job_id: str,
    data: ContainerBatchData,
    indexes: list[int],
    user: str,
    trusted: bool = True,
) -> list[ContainerJob]:
    trusted = trusted and not data.isolated_only
    specs = [
        {
            "docker_image": data.image,
            "command": render_command(data.command, data.items[index], data.index(index)),
            "name": f"{NAME} {bulk_job_id[:8]} #{data.index(index)}",
            "memory_limit": data.memory_limit,
            "cpu_limit": data.cpu_limit,
            "timeout_seconds": data.timeout_seconds,
            "max_retries": data.max_retries,
            "exit_retry": data.exit_retry,
            "bulk_job_id": bulk_job_id,
            "item_key": str(data.index(index)),
            "override_environment": "".join(
                f"{key}={value}\n"
                for key, value in (
                    data.environment
                    | {"ITEM": item_text(data.items[index]), "ITEM_INDEX": str(data.index(index))}
                ).items()
            ),
        }
        for index in indexes
    ]
    jobs = await service.prepare_jobs(
        specs, user=user, host=data.host, executor_type=data.executor_type, trusted=trusted
    )
    for index, job in zip(indexes, jobs, strict=True):
        job.id = container_job_id(bulk_job_id, index)
    return jobs


def _row(index: int, item: Any, job: ContainerJob) -> dict[str, Any]:
    output = job.parsed_output
    duration = job.duration
    return {
        "index": index,
        "item": item_text(item),
        "status": job.status.value,
        "exit_code": job.exit_code,
        "duration_s": round(duration.total_seconds(), 3) if duration is not None else None,
        "output": output if output is not None else job.clean_output[:10_000],
        "error": job.status_message or (job.stderr_log.strip()[-500:] if job.exit_code else ""),
        "container_job_id": job.id,
    }


async def _zip_members(service: ContainerJobService, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """results.json and each item's logs, the logs within ZIP_LOG_BUDGET bytes in all (they
    are held in memory until written; the rest is named in logs/NOT_INCLUDED.txt)."""
    members: dict[str, Any] = {"results.json": rows}
    store = await service.store()
    ids = [row["container_job_id"] for row in rows]
    budget, left_out = ZIP_LOG_BUDGET, []
    for start in range(0, len(ids), READ_CHUNK):
        for job in await store.container_get_many(ids[start : start + READ_CHUNK]):
            item = job.item_key or job.id
            size = len(job.stdout_log) + len(job.stderr_log)
            if size > budget:
                left_out.append(item)
                continue
            budget -= size
            members[f"logs/{item}.stdout.txt"] = job.stdout_log
            members[f"logs/{item}.stderr.txt"] = job.stderr_log
    if left_out:
        members["logs/NOT_INCLUDED.txt"] = (
            f"Logs of {len(left_out)} items exceeded the export's {ZIP_LOG_BUDGET} byte log"
            " budget; read them with GET /container-jobs/{id}/logs. Items: "
            + ", ".join(left_out)
            + "\n"
        )
    return members
