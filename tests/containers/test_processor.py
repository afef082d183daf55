"""ContainerJobService + ContainerProcessor (claimed by the Scheduler's container job source)
on the embedded store, local and mock executors."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest

from src.config import Settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.containers.service import ContainerJobService
from src.services.domain.containers import ContainerJob
from src.services.errors import InvalidInput
from src.services.store.local import LocalStore
from src.services.worker.registry import OperationRegistry
from src.services.worker.scheduler import Scheduler
from src.services.worker.sources import CONTAINER_JOB, ContainerJobSource


@pytest.fixture
async def service(
    settings: Settings, local_store: LocalStore
) -> AsyncIterator[ContainerJobService]:
    fast = settings.model_copy(update={"bulkjobs_retry_backoff_s": 0.01})
    service = ContainerJobService(BulkJobManager(fast, local_store))
    yield service
    await service.aclose()


async def processor(
    service: ContainerJobService, concurrency: int = 4, lease_s: float = 30.0
) -> Scheduler:
    """A Scheduler that claims container jobs only, as `process_container_jobs` runs."""
    store = await service.store()
    settings = service.manager.settings
    registry = OperationRegistry()
    source = ContainerJobSource(store, await service.factory(), settings, poll_interval_s=0.05)
    registry.add_source(source)
    return Scheduler(
        "processor", [CONTAINER_JOB], concurrency, concurrency, store, registry, None, lease_s, 0.05
    )


async def run_all(service: ContainerJobService, *jobs: ContainerJob) -> list[ContainerJob]:
    await asyncio.wait_for((await processor(service)).run(burst=True), 60)
    return [await service.get_job(job.id) for job in jobs]


async def test_local_job_runs_to_completion(service: ContainerJobService) -> None:
    job = await service.create_job(
        "local",
        'echo "{\\"n\\": $N}"; echo warn >&2',
        executor_type="local",
        environment_vars={"N": "7"},
        user="alice",
    )
    assert job.host_id == "local" and job.routing_reason
    (done,) = await run_all(service, job)
    assert done.status == "completed" and done.exit_code == 0
    assert done.parsed_output == {"n": 7}
    assert done.stderr_log == "warn\n"
    assert done.started_at and done.completed_at and done.duration is not None
    assert done.lease_owner is None


async def test_failure_and_timeout_are_recorded(service: ContainerJobService) -> None:
    failing = await service.create_job("local", "exit 3", executor_type="local")
    slow = await service.create_job("local", "sleep 30", executor_type="local", timeout_seconds=1)
    failed, timed_out = await run_all(service, failing, slow)
    assert (failed.status, failed.exit_code) == ("failed", 3)
    assert timed_out.status == "timeout"


async def test_transient_launch_errors_are_retried_then_fail(
    service: ContainerJobService,
) -> None:
    host = await service.create_host(name="mock", executor_type="mock")
    job = await service.create_job("img", "fail-launch", host=host.id, max_retries=2)
    (done,) = await run_all(service, job)
    assert done.status == "failed"
    assert done.retry_count == 2
    assert "launch failed" in done.status_message
    store = await service.store()
    assert (await store.host_get(host.id)).current_job_count == 0  # type: ignore[union-attr]  # the host exists: created above


async def test_host_counts_return_to_zero(service: ContainerJobService) -> None:
    jobs = [
        await service.create_job("local", f"exit {i % 2}", executor_type="local") for i in range(6)
    ]
    done = await run_all(service, *jobs)
    assert sorted(job.status for job in done) == ["completed"] * 3 + ["failed"] * 3
    host = await (await service.store()).host_get("local")
    assert host is not None and host.current_job_count == 0


async def test_cancel_stops_a_running_container(service: ContainerJobService) -> None:
    job = await service.create_job("local", "sleep 30", executor_type="local")
    worker = await processor(service, lease_s=0.3)
    task = asyncio.create_task(worker.run())
    for _ in range(200):
        if (await service.get_job(job.id)).status == "running":
            break
        await asyncio.sleep(0.02)
    assert await service.cancel_job(job.id)
    await asyncio.sleep(0.3)
    done = await service.get_job(job.id)
    await worker.aclose()
    task.cancel()
    assert done.status == "cancelled"
    assert not await service.cancel_job(job.id)  # already over
    host = await (await service.store()).host_get("local")
    assert host is not None and host.current_job_count == 0


async def test_restarted_processor_resumes_a_running_job(service: ContainerJobService) -> None:
    job = await service.create_job("local", "sleep 0.5; echo finished", executor_type="local")
    first = await processor(service)
    await first.tick()
    for _ in range(200):
        if (await service.get_job(job.id)).status == "running":
            break
        await asyncio.sleep(0.02)
    await first.aclose()  # hands the lease back; the process keeps running
    second = await processor(service)
    (done,) = await asyncio.wait_for(run_all_with(second, service, job), 30)
    assert done.status == "completed"
    assert done.stdout_log == "finished\n"


async def run_all_with(
    worker: Scheduler, service: ContainerJobService, job: ContainerJob
) -> list[ContainerJob]:
    await worker.run(burst=True)
    return [await service.get_job(job.id)]


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"image": ""}, "docker_image"),
        ({"image": "x", "cpu_limit": 64}, "cpu_limit"),
        ({"image": "x", "cpu_limit": 0.01}, "cpu_limit"),
        ({"image": "x", "memory_limit": 0}, "memory_limit"),
        ({"image": "x", "timeout_seconds": -1}, "timeout_seconds"),
        ({"image": "x", "environment_template": "nope"}, "environment_template"),
        ({"image": "x", "environment_vars": {"1BAD": "v"}}, "environment_vars"),
        ({"image": "x", "host": "no-such-host"}, "host"),
        ({"image": "x", "executor_type": "fargate"}, "executor_type"),
    ],
)
async def test_create_job_errors_name_the_field(
    service: ContainerJobService, arguments: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        await service.create_job(**arguments)  # type: ignore[arg-type]  # bad arguments on purpose
    assert raised.value.field == field


async def test_limits_must_fit_the_host(service: ContainerJobService) -> None:
    host = await service.create_host(
        name="small", executor_type="mock", executor_config={"max_memory_mb": 256, "max_cpu": 1}
    )
    with pytest.raises(InvalidInput) as raised:
        await service.create_job("img", host=host.id, memory_limit=512)
    assert raised.value.field == "memory_limit"
    with pytest.raises(InvalidInput) as raised:
        await service.create_job("img", host=host.id, cpu_limit=2)
    assert raised.value.field == "cpu_limit"


async def test_template_variables_reach_the_job_with_overrides_on_top(
    service: ContainerJobService,
) -> None:
    await service.create_template(
        name="base", environment_variables_text="# defaults\nA=1\nB=x=y\n"
    )
    job = await service.create_job(
        "local",
        'echo "$A $B $C"',
        executor_type="local",
        environment_template="base",
        environment_vars={"A": "2", "C": "3"},
    )
    (done,) = await run_all(service, job)
    assert done.stdout_log == "2 x=y 3\n"


async def test_local_logs_are_read_live_and_after(service: ContainerJobService) -> None:
    job = await service.create_job(
        "local",
        f"{sys.executable} -c \"print('hi', flush=True)\"; sleep 30",
        executor_type="local",
        timeout_seconds=60,
    )
    worker = await processor(service)
    task = asyncio.create_task(worker.run())
    logs: dict[str, str] = {}
    for _ in range(300):
        logs = await service.get_logs(job.id)
        if logs["stdout"]:
            break
        await asyncio.sleep(0.02)
    assert logs == {"stdout": "hi\n", "stderr": "", "status": "running"}
    await service.cancel_job(job.id)
    await worker.aclose()
    task.cancel()


async def test_a_hosts_limit_holds_whatever_the_processor_concurrency(
    service: ContainerJobService,
) -> None:
    host = await service.create_host(
        name="one-slot",
        executor_type="mock",
        max_concurrent_jobs=1,
        executor_config={"delay_s": 0.05},
    )
    jobs = [await service.create_job("img", "echo hi", host=host.id) for _ in range(4)]
    store = await service.store()
    peak = 0
    worker = await processor(service, concurrency=4)
    task = asyncio.create_task(worker.run(burst=True))
    while not task.done():
        current = await store.host_get(host.id)
        peak = max(peak, current.current_job_count if current else 0)
        await asyncio.sleep(0.005)
    await task
    for _ in range(200):  # jobs that waited for the slot are claimed again after a pause
        done = [await service.get_job(job.id) for job in jobs]
        if all(job.status == "completed" for job in done):
            break
        await asyncio.wait_for((await processor(service, concurrency=4)).run(burst=True), 30)
        await asyncio.sleep(0.05)
    assert [job.status for job in done] == ["completed"] * 4
    assert peak == 1


async def test_an_executor_that_keeps_failing_gives_up_on_the_job(
    service: ContainerJobService, monkeypatch: pytest.MonkeyPatch
) -> None:
    from src.services.containers.executors.errors import ExecutorError
    from src.services.containers.executors.mock import MockExecutor

    async def broken(self: MockExecutor, execution_id: str) -> object:
        raise ExecutorError("backend says no")

    monkeypatch.setattr(MockExecutor, "check_status", broken)
    host = await service.create_host(name="flaky", executor_type="mock")
    job = await service.create_job("img", "sleep 1", host=host.id)
    for _ in range(50):
        await (await processor(service)).run(burst=True)
        if (await service.get_job(job.id)).is_terminal_status:
            break
        await asyncio.sleep(0.05)  # each failed attempt backs off before the next claim
    done = await service.get_job(job.id)
    assert done.status == "failed"
    assert "gave up after 5 attempts" in done.status_message
    assert "backend says no" in done.status_message
    current = await (await service.store()).host_get(host.id)
    assert current is not None and current.current_job_count == 0


async def test_a_full_hosts_backlog_is_left_alone_while_it_waits(
    service: ContainerJobService,
) -> None:
    host = await service.create_host(name="full", executor_type="mock", max_concurrent_jobs=1)
    await service.increment_job_count(host.id)  # its one slot is taken
    jobs = [await service.create_job("img", "echo hi", host=host.id) for _ in range(100)]
    worker = await processor(service, concurrency=8)
    for _ in range(3):
        assert await worker.tick() == 0  # nothing is claimed, moved or written
    store = await service.store()
    untouched = await store.container_get_many([job.id for job in jobs])
    assert {(j.status, j.lease_owner, j.attempts) for j in untouched} == {("pending", None, 0)}
    assert [j.updated_at for j in untouched] == [j.updated_at for j in jobs]
    await service.decrement_job_count(host.id)
    assert await worker.tick() == 1  # one slot: one job
    await worker.aclose()
