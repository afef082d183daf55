"""The runner under faults: a killed runner's job is resumed, a cancelled job stops."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from src.config import Settings
from src.services import metrics
from src.services.bulk_job_manager import BulkJobManager
from src.services.domain import BulkJobStage, BulkJobStatus, StageStatus
from src.services.errors import Conflict
from src.services.job_types import sample
from src.services.job_types.registry import JobTypeRegistry
from src.services.runner import JobRunner, StageContext
from src.services.store.base import Store
from src.services.store.local import LocalStore
from src.services.worker.registry import OperationRegistry
from src.services.worker.scheduler import Scheduler
from src.services.worker.sources import BulkJobSource

STAGES = [
    BulkJobStage.INITIALIZATION,
    BulkJobStage.CONTENT_FETCH,
    BulkJobStage.CONTENT_PROCESSING,
    BulkJobStage.EXPORT_GENERATION,
]


@pytest.fixture
async def manager(settings: Settings, store: Store) -> AsyncIterator[BulkJobManager]:
    manager = BulkJobManager(settings.model_copy(update={"bulkjobs_lease_seconds": 0.6}), store)
    yield manager
    await manager.aclose()


class Pipeline:
    """Processors that record calls; the fetch stage can be made to hang once."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.hang_fetch = asyncio.Event()
        self.fetch_started = asyncio.Event()

    async def init(self, ctx: StageContext) -> dict[str, Any]:
        self.calls.append("init")
        return {"token": "from-init"}

    async def fetch(self, ctx: StageContext) -> list[int]:
        self.calls.append("fetch")
        await ctx.start(10)
        for i in range(10):
            await ctx.report(i + 1, total=10)
            if i == 4 and self.hang_fetch.is_set():
                self.fetch_started.set()
                await asyncio.sleep(3600)
        return list(range(10))

    async def process(self, ctx: StageContext) -> dict[str, Any]:
        self.calls.append("process")
        return {
            "init": await ctx.output("initialization"),
            "fetched": await ctx.output("content_fetch"),
        }

    async def export(self, ctx: StageContext) -> None:
        self.calls.append("export")
        await ctx.manager.create_export(ctx.job_id, "json", await ctx.output("content_processing"))

    def processors(self) -> dict[str, Any]:
        return {
            "initialization": self.init,
            "content_fetch": self.fetch,
            "content_processing": self.process,
            "export_generation": self.export,
        }


async def test_killed_runner_is_resumed_at_its_stage(manager: BulkJobManager) -> None:
    pipeline = Pipeline()
    job_id = await manager.create_bulk_job("pipe", "u1", {}, STAGES)
    pipeline.hang_fetch.set()
    store = await manager.store()
    [job] = await store.claim("doomed", 0.6, ["pipe"])
    # Simulate a crash: the runner never heartbeats and never releases its lease.
    doomed = JobRunner(await manager.job_port(), "doomed", lease_s=0.6, heartbeat_s=3600)
    doomed._release = _forget  # type: ignore[method-assign]  # a dead runner hands nothing back
    crashed = asyncio.create_task(doomed.run_claimed(job, pipeline.processors()))
    await pipeline.fetch_started.wait()
    crashed.cancel()
    await asyncio.gather(crashed, return_exceptions=True)

    pipeline.hang_fetch.clear()
    job_types = JobTypeRegistry()
    job_types.register("pipe", STAGES, pipeline.processors())
    worker = await rescuer(manager, job_types)
    await store.heartbeat(job_id, "doomed", 0.6)  # its last sign of life, however slow the store
    assert await worker.tick() == 0  # the lease has not expired yet
    await asyncio.sleep(0.7)
    await worker.run(burst=True)

    result = await manager.get_job_status(job_id)
    assert result is not None
    assert result.status == BulkJobStatus.COMPLETED, result.error_message
    assert pipeline.calls == ["init", "fetch", "fetch", "process", "export"]
    assert result.stages[0].status == StageStatus.COMPLETED
    export = result.exports[0]
    path = await manager.get_export_file_path(export.export_id)
    assert path is not None
    assert '"init":{"token":"from-init"}' in path.read_text()


async def _forget(job_id: str, failure: object) -> None:
    return None


async def rescuer(manager: BulkJobManager, job_types: JobTypeRegistry) -> Scheduler:
    """A worker claiming bulk jobs of `job_types`."""
    registry = OperationRegistry()
    registry.add_source(BulkJobSource(await manager.job_port(), job_types, manager.settings))
    store = await manager.store()
    return Scheduler("rescuer", None, 1, 1, store, registry, None, 0.6, 0.05)


async def test_cancel_during_a_long_stage(manager: BulkJobManager) -> None:
    pipeline = Pipeline()
    pipeline.hang_fetch.set()
    job_id = await manager.create_bulk_job("pipe", "u1", {}, STAGES)
    run = asyncio.create_task(manager.process_job_with_stages(job_id, pipeline.processors()))
    await pipeline.fetch_started.wait()
    await manager.cancel_job(job_id, reason="stop")
    # The runner notices within a heartbeat (one progress interval) and stops the processor.
    await asyncio.wait_for(run, timeout=5)
    job = await manager.get_job_status(job_id)
    assert job is not None
    assert job.status == BulkJobStatus.CANCELLED
    assert pipeline.calls == ["init", "fetch"]
    before = job.updated_at
    await asyncio.sleep(0.2)
    after = await manager.get_job_status(job_id)
    assert after is not None and after.updated_at == before
    with pytest.raises(Conflict):
        await manager.cancel_job(job_id)


async def test_a_failing_stage_fails_the_job_and_keeps_earlier_results(
    manager: BulkJobManager,
) -> None:
    pipeline = Pipeline()

    async def broken(ctx: StageContext) -> None:
        raise RuntimeError("disk on fire")

    processors = {**pipeline.processors(), "content_processing": broken}
    job_id = await manager.create_bulk_job("pipe", "u1", {}, STAGES)
    report = await manager.process_job_with_stages(job_id, processors)
    assert report is not None
    assert report.status == BulkJobStatus.FAILED
    # The stage failed the job in one store transaction: its error and its name.
    assert report.error_message == "RuntimeError: disk on fire"
    assert (report.failed_stage, report.current_stage) == ("content_processing", None)
    statuses = [stage.status for stage in report.stages]
    assert statuses == ["completed", "completed", "failed", "pending"]
    assert report.stages[1].items_completed == 10
    assert report.stages[2].metadata == {"error_type": "RuntimeError"}


async def test_progress_cancellation_raises_inside_guide_processors(
    manager: BulkJobManager,
) -> None:
    job_id = await manager.create_bulk_job("pipe", "u1", {}, [BulkJobStage.CONTENT_FETCH])
    seen: list[int] = []

    async def fetch(job_id: str, job_data: dict[str, Any]) -> None:
        for i in range(100_000):
            seen.append(i)
            if i == 10:
                await manager.cancel_job(job_id)
            await manager.update_stage_progress(job_id, "content_fetch", i / 100_000, i)

    await manager.process_job_with_stages(job_id, {"content_fetch": fetch})
    job = await manager.get_job(job_id)
    assert job is not None and job.status == BulkJobStatus.CANCELLED
    assert len(seen) < 1000


async def test_missing_processor_fails_the_job(manager: BulkJobManager) -> None:
    job_id = await manager.create_bulk_job("pipe", "u1", {}, STAGES)
    report = await manager.process_job_with_stages(job_id, {})
    assert report is not None
    assert report.status == BulkJobStatus.FAILED
    assert "no processor" in (report.error_message or "")


async def test_a_job_held_by_another_runner_is_not_run_twice(manager: BulkJobManager) -> None:
    job_id = await manager.create_bulk_job("pipe", "u1", {}, STAGES)
    store = await manager.store()
    await store.claim("other", 30, ["pipe"])
    pipeline = Pipeline()
    report = await manager.process_job_with_stages(job_id, pipeline.processors())
    assert report is not None and report.status == BulkJobStatus.PENDING
    assert pipeline.calls == []


async def test_a_processor_may_fail_its_stage_without_failing_the_job(
    manager: BulkJobManager,
) -> None:
    pipeline = Pipeline()

    async def lenient(ctx: StageContext) -> None:
        await ctx.manager.fail_stage(ctx.job_id, ctx.stage, "nothing to process", fatal=False)

    processors = {**pipeline.processors(), "content_processing": lenient}
    job_id = await manager.create_bulk_job("pipe", "u1", {}, STAGES)
    report = await manager.process_job_with_stages(job_id, processors)
    assert report is not None
    assert report.status == BulkJobStatus.COMPLETED, report.error_message
    assert [stage.status for stage in report.stages] == [
        "completed",
        "completed",
        "failed",
        "completed",
    ]
    assert report.stages[2].error_message == "nothing to process"
    assert pipeline.calls == ["init", "fetch", "export"]


@pytest.mark.parametrize(("fail_every", "failed"), [(0, 0), (10, 20)])
async def test_a_200_item_sample_job_reads_200(
    manager: BulkJobManager, fail_every: int, failed: int
) -> None:
    job_data = {"items": 200, "delay_ms": 0, "fail_every": fail_every}
    job_id = await manager.create_bulk_job(sample.NAME, "u1", job_data, sample.STAGES)
    report = await manager.process_job_with_stages(job_id, sample.PROCESSORS)
    assert report is not None
    assert report.status == BulkJobStatus.COMPLETED, report.error_message
    assert (report.items_total, report.items_completed, report.items_failed) == (
        200,
        200 - failed,
        failed,
    )
    # Each stage keeps its own counts; initialization and the export are bookkeeping.
    counts = [(s.name, s.items_total, s.items_completed, s.items_failed) for s in report.stages]
    assert counts == [
        ("initialization", 1, 1, 0),
        ("content_fetch", 200, 200 - failed, failed),
        ("content_processing", 200, 200 - failed, failed),
        ("export_generation", 1, 1, 0),
    ]


async def test_metrics_count_what_the_stages_recorded(settings: Settings, store: Store) -> None:
    # A long progress interval leaves the last reports coalesced when each stage ends.
    slow = settings.model_copy(update={"bulk_progress_interval_ms": 60_000})
    job_type = f"metered-{uuid.uuid4().hex[:8]}"
    async with contextlib.AsyncExitStack() as stack:
        manager = BulkJobManager(slow, store)
        stack.push_async_callback(manager.aclose)
        pipeline = Pipeline()

        async def mixed(ctx: StageContext) -> None:
            await ctx.start(37)
            for done in range(1, 38):
                await ctx.report(done - done // 5, done // 5, 37)

        processors = {**pipeline.processors(), "content_processing": mixed}
        job_id = await manager.create_bulk_job(job_type, "u1", {}, STAGES)
        report = await manager.process_job_with_stages(job_id, processors)
    assert report is not None and report.status == BulkJobStatus.COMPLETED
    for stage in report.stages:
        for outcome, recorded in (
            ("completed", stage.items_completed),
            ("failed", stage.items_failed),
        ):
            labels = {"job_type": job_type, "stage": stage.name, "outcome": outcome}
            counted = metrics.REGISTRY.get_sample_value("bulkjobs_items_total", labels)
            assert counted == recorded, (stage.name, outcome)
    assert (report.stages[1].items_completed, report.stages[2].items_failed) == (10, 7)


async def test_a_job_stored_finished_but_running_is_completed_not_claimed_forever(
    settings: Settings, local_store: LocalStore
) -> None:
    """A file from before jobs followed their stages may hold a job whose stages all ended
    while it still reads as running (the runner crashed between the two writes)."""
    manager = BulkJobManager(settings, local_store)
    try:
        job_id = await manager.create_bulk_job("pipe", "u1", {}, [BulkJobStage.CONTENT_FETCH])
        await manager.start_stage(job_id, BulkJobStage.CONTENT_FETCH)
        await manager.complete_stage(job_id, BulkJobStage.CONTENT_FETCH)
        await local_store._run(_as_stored_by_an_older_version, job_id)
        job_types = JobTypeRegistry()
        job_types.register("pipe", [BulkJobStage.CONTENT_FETCH], {})
        await (await rescuer(manager, job_types)).run(burst=True)
        job = await manager.get_job(job_id)
        assert job is not None and job.status == BulkJobStatus.COMPLETED
        assert await (await manager.store()).claim("again", 30, ["pipe"]) == []
    finally:
        await manager.aclose()


def _as_stored_by_an_older_version(conn: sqlite3.Connection, job_id: str) -> None:
    conn.execute(
        "UPDATE jobs SET status = 'processing', completed_at = NULL, lease_expires_at = 0"
        " WHERE id = ?",
        (job_id,),
    )


async def test_a_worker_that_stops_hands_the_job_back_at_once(manager: BulkJobManager) -> None:
    pipeline = Pipeline()
    pipeline.hang_fetch.set()
    job_id = await manager.create_bulk_job("pipe", "u1", {}, STAGES)
    job_types = JobTypeRegistry()
    job_types.register("pipe", STAGES, pipeline.processors())
    worker = await rescuer(manager, job_types)
    worker.grace_s = 0
    run = asyncio.create_task(worker.run())
    await pipeline.fetch_started.wait()
    worker.request_stop()  # SIGTERM
    await asyncio.wait_for(run, 10)
    job = await manager.get_job(job_id)
    assert job is not None and (job.status, job.lease_owner, job.attempts) == (
        BulkJobStatus.PROCESSING,
        None,
        0,
    )
    store = await manager.store()
    [again] = await store.claim("restarted", 30, ["pipe"])  # no lease to wait out
    assert again.id == job_id
