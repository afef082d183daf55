"""One Scheduler, all kinds: a bulk job (JobRunner) and a container job (ContainerProcessor,
mock executor) run through the built-in job sources beside work items."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from src.config import Settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.containers.service import ContainerJobService
from src.services.job_types.registry import JobTypeRegistry
from src.services.runner import StageContext
from src.services.store.local import LocalStore
from src.services.worker.outbox import Outbox
from src.services.worker.registry import OperationRegistry, WorkContext
from src.services.worker.scheduler import Scheduler
from src.services.worker.sources import BulkJobSource, ContainerJobSource
from tests.containers.conftest import make_host
from tests.worker.conftest import enqueue, items


async def test_bulk_jobs_container_jobs_and_items_in_one_scheduler(
    settings: Settings, tmp_path: Path
) -> None:
    async with LocalStore(settings.bulkjobs_db_path) as store:
        manager = BulkJobManager(settings, store)
        service = ContainerJobService(manager)
        kinds = JobTypeRegistry()
        seen: list[str] = []

        async def stage(ctx: StageContext) -> None:
            seen.append(ctx.stage)

        kinds.register(
            "tiny",
            ["initialization", "content_processing"],
            {"initialization": stage, "content_processing": stage},
        )
        registry = OperationRegistry()

        async def echo(payload: Any, ctx: WorkContext) -> Any:
            return payload

        registry.register("echo", echo)
        registry.add_source(BulkJobSource(await manager.job_port(), kinds, settings))
        registry.add_source(ContainerJobSource(store, await manager.executors(), settings))
        job_id = await manager.create_bulk_job(
            "tiny", "u1", {}, ["initialization", "content_processing"]
        )
        await store.host_create(make_host("mock"))
        container = await service.create_job("busybox", "echo hi", executor_type="mock")
        ids = await enqueue(store, 5)
        async with Outbox(tmp_path / "o.jsonl") as box:
            scheduler = Scheduler("w1", None, 10, 2, store, registry, box, lease_s=5)
            stats = await asyncio.wait_for(scheduler.run(burst=True), 30)
        assert stats.claimed == 7
        job = await manager.get_job_status(job_id)
        assert job is not None and job.status == "completed"
        assert seen == ["initialization", "content_processing"]
        finished = await service.get_job(container.id)
        assert finished.status in ("completed", "failed")  # the mock decides; it ended
        assert finished.lease_owner is None
        assert {item.status for item in await items(store, ids)} == {"completed"}
        await service.aclose()
        await manager.aclose()
