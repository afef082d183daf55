"""A container job's exit retry policy: runs again after chosen non-zero exits, within its own
budget and with back-off, each run recorded; on both stores, with the local executor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from src.config import Settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.containers.service import ContainerJobService
from src.services.domain.containers import ContainerJob, ExitRetryPolicy
from src.services.errors import InvalidInput
from src.services.job_types import container_batch, job_types
from src.services.worker.registry import OperationRegistry
from src.services.worker.scheduler import Scheduler
from src.services.worker.sources import CONTAINER_JOB, ContainerJobSource
from tests.conftest import STORE_KINDS, open_store

FAST = {"backoff_s": 0.01}


@pytest.fixture(params=STORE_KINDS)
async def service(
    request: pytest.FixtureRequest, settings: Settings
) -> AsyncIterator[ContainerJobService]:
    store = await open_store(request.param, settings.bulkjobs_db_path, request)
    fast = settings.model_copy(update={"bulkjobs_container_poll_s": 0.05})
    service = ContainerJobService(BulkJobManager(fast, store))
    try:
        yield service
    finally:
        await service.aclose()
        await store.aclose()


def worker(service: ContainerJobService, store: Any, factory: Any, lease_s: float) -> Scheduler:
    registry = OperationRegistry()
    settings = service.manager.settings
    registry.add_source(ContainerJobSource(store, factory, settings, poll_interval_s=0.05))
    return Scheduler("processor", [CONTAINER_JOB], 4, 4, store, registry, None, lease_s, 0.05)


async def run_all(service: ContainerJobService, lease_s: float = 30.0) -> None:
    scheduler = worker(service, await service.store(), await service.factory(), lease_s)
    await asyncio.wait_for(scheduler.run(burst=True), 60)


def failing_until(counter: Path, runs: int, code: int = 3) -> str:
    """A command that exits with `code` until its `runs`-th run, which succeeds."""
    return (
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {counter};"
        f' echo "run $n" >&2; [ "$n" -ge {runs} ] || exit {code}; echo "{{\\"runs\\": $n}}"'
    )


async def create(service: ContainerJobService, command: str, **policy: Any) -> ContainerJob:
    exit_retry = {**FAST, **policy} if policy else None
    return await service.create_job(
        "local", command, executor_type="local", exit_retry=exit_retry, max_retries=1
    )


async def test_a_listed_exit_code_runs_the_job_again_until_it_succeeds(
    service: ContainerJobService, tmp_path: Path
) -> None:
    job = await create(service, failing_until(tmp_path / "n", 3), retry_on_exit_codes=[3])
    await run_all(service)
    done = await service.get_job(job.id)
    assert (done.status, done.exit_code, done.parsed_output) == ("completed", 0, {"runs": 3})
    runs = done.exit_attempts
    assert [(run.attempt, run.status, run.exit_code) for run in runs] == [
        (1, "failed", 3),
        (2, "failed", 3),
        (3, "completed", 0),
    ]
    assert [run.error for run in runs] == ["run 1", "run 2", ""]
    assert all(run.retry_in_s is not None and run.retry_in_s > 0 for run in runs[:2])
    assert runs[-1].retry_in_s is None
    assert all(run.started_at and run.started_at <= run.finished_at for run in runs)
    assert done.retry_count == 0  # the launch retries are another budget
    host = await (await service.store()).host_get("local")
    assert host is not None and host.current_job_count == 0


async def test_the_policy_budget_ends_in_the_last_runs_failure(
    service: ContainerJobService, tmp_path: Path
) -> None:
    job = await create(
        service, failing_until(tmp_path / "n", 99), retry_on_exit_codes=[3], max_retries=2
    )
    await run_all(service)
    done = await service.get_job(job.id)
    assert (done.status, done.exit_code) == ("failed", 3)
    assert [run.exit_code for run in done.exit_attempts] == [3, 3, 3]
    assert [run.retry_in_s is None for run in done.exit_attempts] == [False, False, True]
    assert (tmp_path / "n").read_text().strip() == "3"


async def test_an_exit_code_not_listed_fails_at_once(
    service: ContainerJobService, tmp_path: Path
) -> None:
    job = await create(service, failing_until(tmp_path / "n", 3, code=4), retry_on_exit_codes=[3])
    await run_all(service)
    done = await service.get_job(job.id)
    assert (done.status, done.exit_code) == ("failed", 4)
    assert [(run.attempt, run.exit_code, run.retry_in_s) for run in done.exit_attempts] == [
        (1, 4, None)
    ]


async def test_without_a_policy_a_failing_exit_is_final(
    service: ContainerJobService, tmp_path: Path
) -> None:
    job = await create(service, failing_until(tmp_path / "n", 3))
    await run_all(service)
    done = await service.get_job(job.id)
    assert (done.status, done.exit_code, done.exit_attempts) == ("failed", 3, [])


async def test_a_job_cancelled_while_it_waits_to_run_again_stays_cancelled(
    service: ContainerJobService, tmp_path: Path
) -> None:
    job = await service.create_job(
        "local",
        failing_until(tmp_path / "n", 99),
        executor_type="local",
        exit_retry={"retry_on_exit_codes": [3], "backoff_s": 30},
    )
    scheduler = worker(service, await service.store(), await service.factory(), lease_s=0.6)
    running = asyncio.create_task(scheduler.run(burst=True))
    try:
        waiting = await wait_for_status(service, job.id, "retrying")
        assert "running again in" in waiting.status_message
        await service.cancel_job(job.id)
        await asyncio.wait_for(running, 30)  # the lease watch stops the wait at once
    finally:
        running.cancel()
    done = await service.get_job(job.id)
    assert done.status == "cancelled"
    assert len(done.exit_attempts) == 1
    assert (tmp_path / "n").read_text().strip() == "1"


async def wait_for_status(service: ContainerJobService, job_id: str, status: str) -> ContainerJob:
    for _ in range(600):
        job = await service.get_job(job_id)
        if job.status == status:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {status}")


async def test_each_item_of_a_container_batch_gets_the_policy(
    service: ContainerJobService, tmp_path: Path
) -> None:
    manager = service.manager
    assert isinstance(manager, BulkJobManager)
    data = job_types.validate_job_data(
        "container_batch",
        {
            "image": "local",
            "executor_type": "local",
            "command": failing_until(tmp_path / "n{index}", 2),
            "items": ["a", "b"],
            "exit_retry": {"retry_on_exit_codes": [3], **FAST},
        },
    )
    job_id = await manager.create_bulk_job("container_batch", "me", data, container_batch.STAGES)
    kind = job_types.get("container_batch")
    report = await manager.process_job_with_stages(job_id, kind.processors)
    assert report is not None and report.status == "completed", report
    assert (report.items_completed, report.items_failed) == (2, 0)
    items = await (await service.store()).container_list(bulk_job_id=job_id)
    assert sorted(len(item.exit_attempts) for item in items) == [2, 2]


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"retry_on_exit_codes": []}, "exit_retry.retry_on_exit_codes"),
        ({"retry_on_exit_codes": [0]}, "exit_retry.retry_on_exit_codes"),
        ({"retry_on_exit_codes": [300]}, "exit_retry.retry_on_exit_codes"),
        ({"retry_on_exit_codes": [1], "max_retries": 0}, "exit_retry.max_retries"),
        ({"retry_on_exit_codes": [1], "backoff_s": 0}, "exit_retry.backoff_s"),
        ({"retry_on_exit_codes": [1], "surprise": 1}, "exit_retry.surprise"),
    ],
)
async def test_a_bad_policy_names_its_field(
    settings: Settings, policy: dict[str, Any], field: str
) -> None:
    manager = BulkJobManager(settings)
    try:
        with pytest.raises(InvalidInput) as raised:
            await ContainerJobService(manager).create_job("x", "true", exit_retry=policy)
    finally:
        await manager.aclose()
    assert raised.value.field == field


def test_the_policy_defaults() -> None:
    policy = ExitRetryPolicy(retry_on_exit_codes=[1, 137, -9])
    assert (policy.max_retries, policy.backoff_s) == (3, 1.0)
