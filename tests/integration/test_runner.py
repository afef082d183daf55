"""The runner under faults: a killed runner's job is resumed, a cancelled job stops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from src.config import Settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.domain import BulkJobStage, BulkJobStatus, StageStatus
from src.services.errors import Conflict
from src.services.job_types.registry import JobTypeRegistry
from src.services.job_worker import JobWorker
from src.services.runner import JobRunner, StageContext
from src.services.store.base import Store

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
        return {"init": ctx.output("initialization"), "fetched": ctx.output("content_fetch")}

    async def export(self, ctx: StageContext) -> None:
        self.calls.append("export")
        await ctx.manager.create_export(ctx.job_id, "json", ctx.output("content_processing"))

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
    doomed = JobRunner(manager, "doomed", lease_s=0.6)
    # Simulate a crash: the runner stops heartbeating and never releases its lease.
    doomed._release = _forget  # type: ignore[method-assign]
    doomed._watch = _never_heartbeat  # type: ignore[method-assign]
    crashed = asyncio.create_task(doomed.run_claimed(job, pipeline.processors()))
    await pipeline.fetch_started.wait()
    crashed.cancel()
    await asyncio.gather(crashed, return_exceptions=True)

    pipeline.hang_fetch.clear()
    registry = JobTypeRegistry()
    registry.register("pipe", STAGES, pipeline.processors())
    worker = JobWorker(manager, registry, concurrency=1, poll_interval_s=0.05, owner="rescuer")
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


async def _forget(job_id: str) -> None:
    return None


async def _never_heartbeat(job_id: str, work: asyncio.Task[None]) -> None:
    await asyncio.sleep(3600)


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
    assert "disk on fire" in (report.error_message or "")
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
    runner = JobRunner(manager, "me")
    assert await runner.run_job(job_id, Pipeline().processors()) is False
