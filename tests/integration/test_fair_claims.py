"""Fair claiming through the Scheduler, on every store: one user's backlog does not starve
another user, and a user holds at most BULKJOBS_USER_MAX_RUNNING running jobs."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from src.config import Settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.job_types.registry import JobTypeRegistry
from src.services.runner import StageContext
from src.services.store.base import Store
from src.services.worker.registry import OperationRegistry
from src.services.worker.scheduler import Scheduler
from src.services.worker.sources import BulkJobSource

STAGES = ["content_processing"]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"bulk_rate_limit_max_jobs": 100, "bulkjobs_user_max_running": 2}
    )


class Gates:
    """Each job's stage waits for its own gate; `started` records who started, in order."""

    def __init__(self) -> None:
        self.gates: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.started: list[tuple[str, str]] = []
        self.changed = asyncio.Event()

    async def stage(self, ctx: StageContext) -> None:
        self.started.append((ctx.job.user_id, ctx.job_id))
        self.changed.set()
        await self.gates[ctx.job_id].wait()

    async def until_started(self, count: int) -> None:
        while len(self.started) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 30)


async def gated_worker(manager: BulkJobManager, gates: Gates, concurrency: int) -> Scheduler:
    """A worker for the `gated` job type, running `concurrency` jobs at once."""
    job_types = JobTypeRegistry()
    job_types.register("gated", STAGES, {"content_processing": gates.stage})
    registry = OperationRegistry()
    port = await manager.job_port()
    registry.add_source(BulkJobSource(port, job_types, manager.settings))
    return Scheduler("w1", None, 10, concurrency, port.store, registry, None, 30.0, 0.05)


async def test_another_users_job_starts_next_despite_a_backlog_of_fifty(
    settings: Settings, store: Store
) -> None:
    manager = BulkJobManager(settings, store)
    gates = Gates()
    backlog = [await manager.create_bulk_job("gated", "busy", {}, STAGES) for _ in range(50)]
    scheduler = await gated_worker(manager, gates, 2)
    run = asyncio.create_task(scheduler.run())
    try:
        await gates.until_started(2)
        assert gates.started == [("busy", backlog[0]), ("busy", backlog[1])]
        newcomer = await manager.create_bulk_job("gated", "newcomer", {}, STAGES)
        scheduler.wake()
        gates.gates[backlog[0]].set()  # a slot frees: busy holds 1, newcomer 0
        await gates.until_started(3)
        assert gates.started[2] == ("newcomer", newcomer)
        gates.gates[newcomer].set()
        await gates.until_started(4)
        assert gates.started[3] == ("busy", backlog[2])
    finally:
        for gate in gates.gates.values():
            gate.set()
        scheduler.request_stop()
        await run
        await manager.aclose()


async def test_a_user_at_the_cap_leaves_free_slots_to_others(
    settings: Settings, store: Store
) -> None:
    manager = BulkJobManager(settings, store)
    gates = Gates()
    for _ in range(5):
        await manager.create_bulk_job("gated", "busy", {}, STAGES)
    scheduler = await gated_worker(manager, gates, 4)
    run = asyncio.create_task(scheduler.run())
    try:
        await gates.until_started(2)
        assert await scheduler.tick() == 0  # two slots free, but busy is at its cap of 2
        newcomer = await manager.create_bulk_job("gated", "newcomer", {}, STAGES)
        scheduler.wake()
        await gates.until_started(3)
        assert gates.started[2] == ("newcomer", newcomer)
    finally:
        for gate in gates.gates.values():
            gate.set()
        scheduler.request_stop()
        await run
        await manager.aclose()
