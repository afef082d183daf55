"""Host failover (issue 16, section 3) with two mock hosts, one failing, on both stores:
workers probe hosts through the Scheduler, failed probes and launches count against a host,
routing skips it past the threshold and takes it back after a good probe; an unpinned job
whose launch fails is re-routed (same isolation rule), a pinned one retries where it is."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from src.config import Settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.containers.service import ContainerJobService
from src.services.domain import utcnow
from src.services.domain.containers import ContainerJob, ExecutorHost
from src.services.errors import InvalidInput
from src.services.store.base import Store
from src.services.worker.registry import OperationRegistry
from src.services.worker.scheduler import Scheduler
from src.services.worker.service import build_registry, container_worker
from src.services.worker.sources import HOST_HEALTH, HostHealthSource

THRESHOLD = 2


@pytest.fixture
def manager(settings: Settings, store: Store) -> BulkJobManager:
    probing = settings.model_copy(
        update={
            "bulkjobs_host_health_interval_s": 3600,  # each host due once per test
            "bulkjobs_host_failure_threshold": THRESHOLD,
            "bulkjobs_container_poll_s": 0.05,
        }
    )
    return BulkJobManager(probing, store)


@pytest.fixture
async def service(manager: BulkJobManager) -> AsyncIterator[ContainerJobService]:
    service = ContainerJobService(manager)
    yield service
    await service.aclose()


@pytest.fixture
async def hosts(service: ContainerJobService) -> tuple[ExecutorHost, ExecutorHost]:
    """`flaky` (preferred: weight 200) fails every launch and probe; `steady` works."""
    flaky = await service.create_host(
        name="flaky",
        executor_type="mock",
        weight=200,
        executor_config={"fail_launch": True, "healthy": False},
    )
    steady = await service.create_host(name="steady", executor_type="mock", weight=100)
    return flaky, steady


async def probe_all(service: ContainerJobService) -> None:
    """One round of the workers' probes: a Scheduler over the health source, until idle."""
    store = await service.store()
    for host in await store.host_list():  # each due now
        await store.host_update(host.id, {"next_probe_at": None})
    registry = OperationRegistry()
    source = HostHealthSource(store, await service.factory(), service.manager.settings)
    registry.add_source(source)
    scheduler = Scheduler("prober", [HOST_HEALTH], 10, 10, store, registry, None, 30, 0.01)
    await asyncio.wait_for(scheduler.run(burst=True), 30)
    assert scheduler.stats.claimed >= 2


async def run_jobs(service: ContainerJobService, *jobs: ContainerJob) -> list[ContainerJob]:
    """Run the jobs with `process_container_jobs`'s Scheduler (no probe is due meanwhile,
    so what the host records comes from the launches alone)."""
    store = await service.store()
    for found in await store.host_list():
        await store.host_update(found.id, {"next_probe_at": utcnow() + timedelta(days=1)})
    manager = service.manager
    assert isinstance(manager, BulkJobManager)
    scheduler, _ = await container_worker(manager, concurrency=4, poll_interval_s=0.05)
    await asyncio.wait_for(scheduler.run(burst=True), 60)
    return [await service.get_job(job.id) for job in jobs]


async def host(service: ContainerJobService, name: str) -> ExecutorHost:
    return await service.get_host(name)


async def test_workers_probe_hosts_through_the_scheduler(
    manager: BulkJobManager, service: ContainerJobService, hosts: Any
) -> None:
    registry = await build_registry(manager)
    assert isinstance(registry.source(HOST_HEALTH), HostHealthSource)
    await probe_all(service)
    flaky = await host(service, "flaky")
    assert flaky.health_check_failures == 1 and flaky.healthy
    assert flaky.last_health_error == "mock: unhealthy" and flaky.last_health_check is not None
    steady = await host(service, "steady")
    assert (steady.health_check_failures, steady.last_health_error) == (0, None)
    assert steady.next_probe_at is not None and steady.last_health_check is not None


async def test_routing_skips_a_failing_host_until_a_probe_succeeds(
    service: ContainerJobService, hosts: Any
) -> None:
    first = await service.create_job("img", executor_type="mock")
    assert first.host_id == hosts[0].id  # the preferred host, while it counts as healthy
    for _ in range(THRESHOLD):
        await probe_all(service)
    assert not (await host(service, "flaky")).healthy
    skipped = await service.create_job("img", executor_type="mock")
    assert skipped.host_id == hosts[1].id
    with pytest.raises(InvalidInput, match="unhealthy"):
        await service.create_job("img", host="flaky", executor_type="mock")

    await service.update_host(hosts[0].id, executor_config={"healthy": True})
    await probe_all(service)
    back = await host(service, "flaky")
    assert (back.healthy, back.health_check_failures, back.last_health_error) == (True, 0, None)
    assert (await service.create_job("img", executor_type="mock")).host_id == hosts[0].id


async def test_an_unpinned_job_is_re_routed_to_a_healthy_host(
    service: ContainerJobService, hosts: Any
) -> None:
    flaky, steady = hosts
    job = await service.create_job("img", "echo done", user="alice", trusted=False)
    assert job.host_id == flaky.id and not job.host_pinned
    (done,) = await run_jobs(service, job)
    assert (done.status, done.host_id, done.stdout_log) == ("completed", steady.id, "done\n")
    assert done.routing_reason.startswith("failover from flaky (launch failed: mock: host")
    assert "steady" in done.routing_reason and done.retry_count == 0
    counted = await host(service, "flaky")
    assert counted.health_check_failures == 1 and "launch failed" in str(counted.last_health_error)
    assert counted.last_health_check is None  # a launch is not a probe
    assert counted.current_job_count == 0 and (await host(service, "steady")).current_job_count == 0


async def test_failed_launches_take_a_host_out_of_routing(
    service: ContainerJobService, hosts: Any
) -> None:
    jobs = [await service.create_job("img", "true", executor_type="mock") for _ in range(3)]
    assert {job.host_id for job in jobs} == {hosts[0].id}
    done = await run_jobs(service, *jobs)
    assert {job.status for job in done} == {"completed"}
    assert {job.host_id for job in done} == {hosts[1].id}
    assert not (await host(service, "flaky")).healthy
    assert (await service.create_job("img", executor_type="mock")).host_id == hosts[1].id


async def test_a_pinned_job_retries_on_its_host(service: ContainerJobService, hosts: Any) -> None:
    flaky, _ = hosts
    job = await service.create_job("img", "true", host="flaky", max_retries=1)
    assert job.host_pinned
    (done,) = await run_jobs(service, job)
    assert (done.status, done.host_id, done.retry_count) == ("failed", flaky.id, 1)
    assert "launch failed" in done.status_message and "failover" not in done.routing_reason
    counted = await host(service, "flaky")
    assert counted.health_check_failures == 2 and not counted.healthy


async def test_failover_keeps_the_isolation_rule(service: ContainerJobService) -> None:
    """A non-admin's job whose sandbox stopped admitting it goes to the other sandbox, never
    to the bare `local` host, however much routing would prefer it."""
    await service.update_host("local", weight=1000)
    allow = {"allow_untrusted_jobs": True}
    first = await service.create_host(
        name="sandbox-1", executor_type="local", weight=500, executor_config=allow
    )
    second = await service.create_host(name="sandbox-2", executor_type="local", weight=1)
    await service.update_host(second.id, executor_config=allow)
    job = await service.create_job("local", "echo safe", user="alice", trusted=False)
    assert job.host_id == first.id
    await service.update_host(first.id, executor_config={})
    (done,) = await run_jobs(service, job)
    assert (done.status, done.host_id, done.stdout_log) == ("completed", second.id, "safe\n")
    assert "failover from sandbox-1" in done.routing_reason
    assert "without isolation" in done.routing_reason

    pinned = await service.create_job(
        "local", "echo never", host="sandbox-2", user="alice", trusted=False
    )
    await service.update_host(second.id, executor_config={})
    (refused,) = await run_jobs(service, pinned)
    assert (refused.status, refused.host_id, refused.stdout_log) == ("failed", second.id, "")
    assert "without isolation" in refused.status_message
