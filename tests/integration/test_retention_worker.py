"""The server's embedded worker runs the retention sweep as one of its job sources."""

from __future__ import annotations

import asyncio

import pytest

from src.config import Settings
from src.services.domain import BulkJobStatus, NewJob
from src.services.worker.sources import RETENTION
from tests.integration.conftest import Api


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A retention under a tenth of a millisecond, swept every 50 ms.
    return settings.model_copy(
        update={"bulkjobs_job_retention_days": 1e-9, "bulkjobs_cleanup_interval_s": 0.05}
    )


async def test_the_embedded_worker_deletes_finished_jobs_past_their_retention(api: Api) -> None:
    worker = api.app.state.worker
    assert RETENTION in worker.registry.source_names() and worker.limit(RETENTION) == 1
    store = await api.manager.store()
    new = NewJob(job_type="manual", user_id="alice", job_data={}, stages=["initialization"])
    finished = await store.create(new, None)
    running = await store.create(new, None)
    await store.update_status(running, BulkJobStatus.PROCESSING)
    await store.update_status(finished, BulkJobStatus.COMPLETED)
    for _ in range(500):  # the worker sweeps every 50 ms
        if await store.get_job(finished) is None:
            break
        await asyncio.sleep(0.02)
    assert await store.get_job(finished) is None
    assert await store.get_job(running) is not None  # unfinished jobs are never swept
