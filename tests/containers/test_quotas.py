"""The per-user cap on unfinished container jobs through the Python API (create_job,
create_jobs_bulk, bulk_restart_jobs), on both stores: refused whole, never passed, not for
callers that opt out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from src.config import Settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.containers.bulk_operations import ContainerBulkOperations
from src.services.containers.service import ContainerJobService
from src.services.domain.containers import ExecutorHost
from src.services.errors import ContainerQuotaExceeded
from src.services.store.base import Store

CAP = 30


@pytest.fixture
async def service(settings: Settings, store: Store) -> AsyncIterator[ContainerJobService]:
    capped = settings.model_copy(update={"bulkjobs_user_max_unfinished_container_jobs": CAP})
    service = ContainerJobService(BulkJobManager(capped, store))
    yield service
    await service.aclose()


@pytest.fixture
def ops(service: ContainerJobService) -> ContainerBulkOperations:
    return ContainerBulkOperations(service)


@pytest.fixture
async def host(service: ContainerJobService) -> ExecutorHost:
    return await service.create_host(name="mock-q", executor_type="mock", max_concurrent_jobs=1)


async def unfinished(store: Store, user: str = "alice") -> int:
    jobs = await store.container_list(created_by=user, limit=1000)
    return sum(1 for job in jobs if not job.is_terminal_status)


async def test_create_job_is_refused_at_the_cap(
    service: ContainerJobService, store: Store, host: ExecutorHost
) -> None:
    for _ in range(CAP):
        await service.create_job("alpine", user="alice", host=host)
    with pytest.raises(ContainerQuotaExceeded) as refused:
        await service.create_job("alpine", user="alice", host=host)
    assert (refused.value.maximum, refused.value.usage) == (CAP, CAP)
    await service.create_job("alpine", user="bob", host=host)  # another user's room
    await service.create_job("alpine", user="alice", host=host, limited=False)
    assert await unfinished(store) == CAP + 1


async def test_a_bulk_creation_over_the_cap_writes_nothing(
    ops: ContainerBulkOperations, store: Store, host: ExecutorHost
) -> None:
    await ops.create_jobs_bulk("alpine", 10, "alice", host)
    with pytest.raises(ContainerQuotaExceeded) as refused:
        await ops.create_jobs_bulk("alpine", 25, "alice", host, batch_size=5)
    assert (refused.value.usage, refused.value.requested) == (10, 25)
    assert await unfinished(store) == 10
    jobs, errors = await ops.create_jobs_bulk("alpine", 20, "alice", host, batch_size=5)
    assert (len(jobs), errors) == (20, [])
    assert await unfinished(store) == CAP


async def test_concurrent_bulk_creations_are_each_all_or_nothing(
    ops: ContainerBulkOperations, store: Store, host: ExecutorHost
) -> None:
    """20 creations of 12 jobs in batches of 5 (a reservation each), against a cap of 30."""

    async def create() -> int:
        try:
            jobs, errors = await ops.create_jobs_bulk("alpine", 12, "alice", host, batch_size=5)
        except ContainerQuotaExceeded:
            return 0
        assert errors == []
        return len(jobs)

    created = await asyncio.gather(*(create() for _ in range(20)))
    assert set(created) <= {0, 12} and created.count(12) == 2
    assert await unfinished(store) == 24


async def test_restarted_copies_count_against_the_cap(
    ops: ContainerBulkOperations, service: ContainerJobService, store: Store, host: ExecutorHost
) -> None:
    jobs, _ = await ops.create_jobs_bulk("alpine", CAP, "alice", host)
    finished = [job.id for job in jobs[:3]]
    await ops.bulk_cancel_jobs(finished)
    await service.create_job("alpine", user="alice", host=host)
    await service.create_job("alpine", user="alice", host=host)
    restarted, errors = await ops.bulk_restart_jobs(finished)
    assert restarted == {} and set(errors) == set(finished)
    assert all("BULKJOBS_USER_MAX_UNFINISHED_CONTAINER_JOBS" in error for error in errors.values())
    restarted, errors = await ops.bulk_restart_jobs(finished, limited=False)
    assert len(restarted) == 3 and errors == {}
