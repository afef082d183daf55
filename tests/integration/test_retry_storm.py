"""A job whose runner fails outside its processors is retried within its attempt budget, with a
back-off, and then failed with its last error; other users' jobs go on meanwhile (the retry
storm of issue 14 item 1: it used to be claimed again at once, forever)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from src.config import Settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.domain import BulkJobStatus
from src.services.job_types.registry import JobTypeRegistry
from src.services.runner import StageContext
from src.services.store.base import Store
from src.services.worker.registry import OperationRegistry
from src.services.worker.scheduler import Scheduler
from src.services.worker.sources import BulkJobSource
from tests.integration.conftest import Api

#: A container that prints JSON nested 300 levels deep: parsed fine, but not storable as a
#: stage output (orjson refuses more than 254 levels), so the runner fails after the stage.
DEEP = f"{sys.executable} -c \"print('[' * 300 + ']' * 300)\""


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"bulkjobs_retry_backoff_s": 0.05, "bulk_rate_limit_max_jobs": 100}
    )


async def test_a_container_batch_whose_output_cannot_be_stored_fails_clearly(api: Api) -> None:
    poison = {
        "job_type": "container_batch",
        "job_data": {"image": "local", "command": DEEP, "items": [1], "executor_type": "local"},
    }
    created = await api.client.post("/bulk-jobs", json=poison, headers=api.admin)
    assert created.status_code == 202, created.text
    healthy = {"job_type": "sample", "job_data": {"items": 5, "delay_ms": 1}}
    other = (await api.client.post("/bulk-jobs", json=healthy, headers=api.alice)).json()
    poisoned = await api.wait_for(created.json()["job_id"], headers=api.admin)
    assert poisoned["status"] == "failed"
    message = poisoned["error_message"]
    assert message.startswith("gave up after 5 attempts; last error: ")
    assert "Recursion limit" in message and "content_processing" in message
    job = await api.manager.get_job(poisoned["job_id"])
    assert job is not None and job.attempts == 5  # five claims, not hundreds
    assert (await api.wait_for(other["job_id"]))["status"] == "completed"


async def test_a_runner_failure_is_retried_with_back_off_then_fails(
    settings: Settings, store: Store
) -> None:
    manager = BulkJobManager(settings, store)
    calls = 0

    async def stage(ctx: StageContext) -> Any:
        nonlocal calls
        calls += 1
        # An integer beyond 64 bits: no JSON encoder here takes it, so its output is lost.
        return {"value": 2**70} if ctx.job.user_id == "poison" else {"ok": True}

    job_types = JobTypeRegistry()
    job_types.register("odd", ["content_processing"], {"content_processing": stage})
    poison = await manager.create_bulk_job("odd", "poison", {}, ["content_processing"])
    fine = await manager.create_bulk_job("odd", "fine", {}, ["content_processing"])
    registry = OperationRegistry()
    registry.add_source(BulkJobSource(await manager.job_port(), job_types, settings))
    scheduler = Scheduler("w1", None, 4, 4, store, registry, None, 5.0, 0.02)
    task = asyncio.create_task(scheduler.run())
    try:
        for _ in range(500):
            job = await manager.get_job(poison)
            if job is not None and job.is_terminal:
                break
            await asyncio.sleep(0.02)
    finally:
        scheduler.request_stop()
        await task
    assert job is not None and job.status == BulkJobStatus.FAILED
    assert job.error_message is not None and "64-bit" in job.error_message
    assert (job.attempts, calls) == (5, 6)  # five attempts of the poison, one of the other
    done = await manager.get_job(fine)
    assert done is not None and done.status == BulkJobStatus.COMPLETED
    await manager.aclose()
