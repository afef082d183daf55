"""One host-assignment rule on every path (issue 14 item 3): a non-admin's container job runs
only on a host that isolates it (any executor but `local`, or a host whose config sets
`allow_untrusted_jobs`), whoever creates, migrates, restarts or retries it. On both stores."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from src.config import Settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.containers.bulk_operations import ContainerBulkOperations
from src.services.containers.factory import ExecutorFactory
from src.services.containers.processor import ContainerProcessor
from src.services.containers.service import ContainerJobService
from src.services.domain.containers import ExecutorHost, isolation_refusal
from src.services.errors import Conflict
from src.services.store.base import Store
from tests.containers.conftest import make_host


@pytest.fixture
async def service(settings: Settings, store: Store) -> AsyncIterator[ContainerJobService]:
    service = ContainerJobService(BulkJobManager(settings, store))
    yield service
    await service.aclose()


@pytest.fixture
def ops(service: ContainerJobService) -> ContainerBulkOperations:
    return ContainerBulkOperations(service)


async def mock_host(service: ContainerJobService, **fields: Any) -> ExecutorHost:
    return await service.create_host(name="sandboxed", executor_type="mock", **fields)


async def sandbox(service: ContainerJobService) -> ExecutorHost:
    """A local host that admits non-admins' jobs (until an admin says otherwise)."""
    return await service.create_host(
        name="sandbox", executor_type="local", executor_config={"allow_untrusted_jobs": True}
    )


def test_the_rule() -> None:
    local, docker = make_host("local", name="bare"), make_host("docker")
    allowed = make_host("local", executor_config={"allow_untrusted_jobs": True})
    assert isolation_refusal(local, untrusted=False) is None
    assert isolation_refusal(docker, untrusted=True) is None
    assert isolation_refusal(allowed, untrusted=True) is None
    refusal = isolation_refusal(local, untrusted=True)
    assert refusal is not None and "host bare" in refusal and "without isolation" in refusal


async def test_creation_marks_whose_job_it_is(service: ContainerJobService) -> None:
    host = await mock_host(service)
    users = await service.create_job("alpine", user="alice", trusted=False)
    pinned = await service.create_job("alpine", user="alice", host=host.name, trusted=False)
    admins = await service.create_job("alpine", user="root", executor_type="local")
    assert (users.untrusted, users.host_pinned) == (True, False)
    assert (pinned.untrusted, pinned.host_pinned) == (True, True)
    assert (admins.untrusted, admins.host_pinned) == (False, False)
    stored = await (await service.store()).container_get(pinned.id)
    assert stored is not None and (stored.untrusted, stored.host_pinned) == (True, True)


async def test_an_admin_cannot_migrate_a_users_job_to_local(
    service: ContainerJobService, ops: ContainerBulkOperations
) -> None:
    host = await mock_host(service)
    users = await service.create_job("alpine", "sleep 1", user="alice", trusted=False)
    admins = await service.create_job("alpine", "sleep 1", user="root", host=host.name)
    moved, errors = await ops.migrate_jobs_to_host([users.id, admins.id], "local")
    assert moved == 1 and list(errors) == [users.id]
    assert "host local" in errors[users.id] and "without isolation" in errors[users.id]
    store = await service.store()
    kept = await store.container_get(users.id)
    assert kept is not None and (kept.host_id, kept.executor_type) == (host.id, "mock")

    allowed = await sandbox(service)
    moved, errors = await ops.migrate_jobs_to_host([users.id], allowed.name)
    assert (moved, errors) == (1, {})


async def test_the_store_refuses_the_move_itself(service: ContainerJobService) -> None:
    """Whatever the caller checked, the store checks again in the transaction that writes."""
    await mock_host(service)
    users = await service.create_job("alpine", user="alice", trusted=False)
    store = await service.store()
    moved, errors = await store.container_migrate([users.id], "local", "local")
    assert moved == [] and "without isolation" in errors[users.id]
    with pytest.raises(Conflict, match="without isolation"):
        await store.container_transition(users.id, "queued", {"host_id": "local"})
    job = users.model_copy(update={"id": "copy-1", "host_id": "local"})
    with pytest.raises(Conflict, match="without isolation"):
        await store.container_create_batch([job])
    with pytest.raises(Conflict, match="without isolation"):
        await store.container_create_copies(job, ["copy-2", "copy-3"])
    assert await store.container_get_many(["copy-1", "copy-2", "copy-3"]) == []
    admins = job.model_copy(update={"id": "copy-4", "untrusted": False})
    await store.container_create_batch([admins])  # an admin's job may go there


async def test_restart_keeps_the_rule(
    service: ContainerJobService, ops: ContainerBulkOperations
) -> None:
    allowed = await sandbox(service)
    users = await service.create_job("local", "true", user="alice", trusted=False)
    assert users.host_id == allowed.id
    store = await service.store()
    await store.container_transition(users.id, "failed")
    await service.update_host(allowed.id, executor_config={})  # no longer admits them
    restarted, errors = await ops.bulk_restart_jobs([users.id])
    assert restarted == {} and "without isolation" in errors[users.id]

    await service.update_host(allowed.id, executor_config={"allow_untrusted_jobs": True})
    restarted, errors = await ops.bulk_restart_jobs([users.id])
    copy = await store.container_get(restarted[users.id])
    assert copy is not None and (copy.untrusted, copy.host_id) == (True, allowed.id)


async def test_a_retry_never_launches_on_a_host_that_stopped_isolating(
    service: ContainerJobService,
) -> None:
    """The processor asks the rule again before each launch: a host whose config changed
    after routing fails the job with the reason instead of running it unisolated."""
    allowed = await sandbox(service)
    users = await service.create_job("local", "touch ran", user="alice", trusted=False)
    await service.update_host(allowed.id, executor_config={})
    store = await service.store()
    (claimed,) = await store.container_claim("test-owner", 30, 10)
    processor = ContainerProcessor(store, ExecutorFactory(store))
    await processor.process(claimed, "test-owner", 30)
    done = await store.container_get(users.id)
    assert done is not None and done.status == "failed"
    assert "without isolation" in done.status_message and done.execution_id == ""
