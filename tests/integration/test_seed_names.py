"""The container manager seed's names, used as the seed shows them, on every store.

`create_job(..., docker_host=host)` and `job.get_all_environment_variables()` (template plus
overrides, with no argument).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from src.config import Settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.containers.service import ContainerJobService
from src.services.domain.containers import TemplateNotLoaded
from src.services.errors import InvalidInput
from src.services.store.base import ContainerStore, Store


@pytest.fixture
async def service(settings: Settings, store: Store) -> AsyncIterator[ContainerJobService]:
    service = ContainerJobService(BulkJobManager(settings, store))
    yield service
    await service.aclose()


async def test_docker_host_is_another_name_for_host(service: ContainerJobService) -> None:
    executor_host = await service.create_host(name="mock-1", executor_type="mock")
    job = await service.create_job(
        image="python:3.11-slim",
        command="python -c 'print(1)'",
        name="Example Job",
        docker_host=executor_host,
        memory_limit=256,
        cpu_limit=1.0,
    )
    assert job.host_id == executor_host.id
    by_name = await service.create_job("alpine:latest", "echo hi", docker_host="mock-1")
    assert by_name.host_id == executor_host.id
    same = await service.create_job("alpine", host=executor_host.id, docker_host=executor_host)
    assert same.host_id == executor_host.id
    other = await service.create_host(name="mock-2", executor_type="mock")
    with pytest.raises(InvalidInput) as refused:
        await service.create_job("alpine", host=other.id, docker_host=executor_host.id)
    assert refused.value.field == "docker_host"
    with pytest.raises(InvalidInput) as refused:
        await service.create_job("alpine", docker_host="no-such-host")
    assert refused.value.field == "host"


async def test_all_environment_variables_resolve_the_jobs_own_template(
    service: ContainerJobService,
) -> None:
    await service.create_template(
        name="nodejs-production", environment_variables_text="NODE_ENV=production\nPORT=80\n"
    )
    job = await service.create_job(
        image="node:20",
        command="node app.js",
        environment_template="nodejs-production",  # Template name
        environment_vars={"PORT": "8080", "DEBUG": "true"},
    )
    expected = {"NODE_ENV": "production", "PORT": "8080", "DEBUG": "true"}

    # Get resolved environment variables (template + overrides)
    all_env_vars = job.get_all_environment_variables()
    assert all_env_vars == expected
    assert job.get_override_environment_variables_dict() == {"PORT": "8080", "DEBUG": "true"}

    # A job read back through the service, alone or in a list, resolves it too.
    assert (await service.get_job(job.id)).get_all_environment_variables() == expected
    [listed] = await service.list_jobs(limit=5)
    assert listed.get_all_environment_variables() == expected

    # Straight from the store it has not been loaded: an error that says how, not a silent {}.
    raw = await (await service.store()).container_get(job.id)
    assert raw is not None
    with pytest.raises(TemplateNotLoaded, match="resolve_template"):
        raw.get_all_environment_variables()
    resolved = await service.resolve_template(raw)
    assert resolved.get_all_environment_variables() == expected


async def test_a_job_without_a_template_has_its_overrides(service: ContainerJobService) -> None:
    job = await service.create_job("alpine", environment_vars={"A": "1"})
    store: ContainerStore = await service.store()
    raw = await store.container_get(job.id)
    assert raw is not None and raw.get_all_environment_variables() == {"A": "1"}
