"""ScalewayExecutor against the Serverless Jobs v1alpha1 REST API, mocked with respx."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx

from src.services.containers.executors.errors import (
    ExecutorConfigurationError,
    ExecutorConnectionError,
    ExecutorError,
    ExecutorResourceError,
)
from src.services.containers.executors.scaleway import ScalewayExecutor
from src.services.domain.containers import ContainerJob, ExecutorHost

BASE = "https://api.scaleway.com/serverless-jobs/v1alpha1/regions/fr-par"
DEFINITION = "11111111-2222-3333-4444-555555555555"
RUN = "99999999-8888-7777-6666-555555555555"
SECRET = "scw-secret-0000-that-must-never-leak"


@pytest.fixture
async def executor() -> AsyncIterator[ScalewayExecutor]:
    host = ExecutorHost(
        id="h1",
        name="scaleway",
        executor_type="scaleway",
        executor_config={
            "region": "fr-par",
            "job_definition_id": DEFINITION,
            "secret_key": SECRET,
        },
    )
    executor = ScalewayExecutor(host)
    yield executor
    await executor.aclose()


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


def job_run(state: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": RUN,
        "job_definition_id": DEFINITION,
        "state": state,
        "error_message": "",
    } | fields


def make_job(command: str = "echo hello", **fields: Any) -> ContainerJob:
    return ContainerJob(
        id="j1", executor_type="scaleway", docker_image="busybox", command=command, **fields
    )


async def launch(executor: ScalewayExecutor, api: respx.MockRouter, job: ContainerJob) -> str:
    api.post(f"/job-definitions/{DEFINITION}/start").respond(
        200, json={"job_runs": [job_run("queued")]}
    )
    result = await executor.launch_job(job, {"GREETING": "hi"})
    job.set_execution_identifier(result.execution_id)
    return result.execution_id


async def test_success(executor: ScalewayExecutor, api: respx.MockRouter) -> None:
    job = make_job("sh -c 'echo $GREETING'")
    run_id = await launch(executor, api, job)
    start = api.calls.last.request
    assert run_id == RUN
    assert start.headers["X-Auth-Token"] == SECRET
    assert json.loads(start.content) == {
        "command": "sh -c 'echo $GREETING'",
        "environment_variables": {"GREETING": "hi"},
    }

    route = api.get(f"/job-runs/{RUN}")
    route.respond(200, json=job_run("running"))
    assert (await executor.check_status(RUN)).state == "running"
    route.respond(
        200,
        json=job_run(
            "succeeded",
            exit_code=0,
            started_at="2026-01-01T10:00:00Z",
            terminated_at="2026-01-01T10:00:05Z",
        ),
    )
    result = await executor.harvest_job(job)
    assert (result.status, result.exit_code, result.stdout) == ("completed", 0, "")
    assert result.finished_at is not None and result.started_at is not None
    assert (result.finished_at - result.started_at).total_seconds() == 5


async def test_failure_exit_code_and_message(
    executor: ScalewayExecutor, api: respx.MockRouter
) -> None:
    job = make_job("false")
    await launch(executor, api, job)
    api.get(f"/job-runs/{RUN}").respond(
        200, json=job_run("failed", exit_code=2, error_message="container exited with code 2")
    )
    status = await executor.check_status(RUN)
    assert (status.state, status.exit_code) == ("exited", 2)
    result = await executor.harvest_job(job)
    assert (result.status, result.exit_code) == ("failed", 2)
    assert result.stderr == "container exited with code 2"
    assert await executor.get_logs(RUN) == ("", "container exited with code 2")


async def test_cancelled_run_fails_without_exit_code(
    executor: ScalewayExecutor, api: respx.MockRouter
) -> None:
    api.get(f"/job-runs/{RUN}").respond(200, json=job_run("canceled"))
    status = await executor.check_status(RUN)
    assert (status.state, status.exit_code, status.reason) == ("failed", None, "canceled")


async def test_not_found(executor: ScalewayExecutor, api: respx.MockRouter) -> None:
    api.get(f"/job-runs/{RUN}").respond(404, json={"message": "resource is not found"})
    assert (await executor.check_status(RUN)).state == "not-found"
    assert await executor.cleanup(RUN) is False
    api.post(f"/job-definitions/{DEFINITION}/start").respond(
        404, json={"message": "resource is not found", "type": "not_found"}
    )
    with pytest.raises(ExecutorResourceError):
        await executor.launch_job(make_job(), {})


async def test_server_error_is_transient(executor: ScalewayExecutor, api: respx.MockRouter) -> None:
    api.post(f"/job-definitions/{DEFINITION}/start").respond(503, text="upstream unavailable")
    with pytest.raises(ExecutorError) as caught:
        await executor.launch_job(make_job(), {})
    assert caught.value.transient is True
    assert "HTTP 503" in str(caught.value)


async def test_rate_limit_is_transient(executor: ScalewayExecutor, api: respx.MockRouter) -> None:
    api.get(f"/job-runs/{RUN}").respond(429, json={"message": "quota exceeded"})
    with pytest.raises(ExecutorError) as caught:
        await executor.check_status(RUN)
    assert caught.value.transient is True


async def test_unauthorized_is_a_configuration_error(
    executor: ScalewayExecutor, api: respx.MockRouter
) -> None:
    api.post(f"/job-definitions/{DEFINITION}/start").respond(
        401, json={"message": "authentication is denied", "type": "denied_authentication"}
    )
    with pytest.raises(ExecutorConfigurationError) as caught:
        await executor.launch_job(make_job(), {})
    assert caught.value.transient is False
    api.get(f"/job-definitions/{DEFINITION}").respond(403, json={"message": "forbidden"})
    health = await executor.get_health_status()
    assert health["healthy"] is False
    assert "HTTP 403" in health["error"]


async def test_connection_error(executor: ScalewayExecutor, api: respx.MockRouter) -> None:
    api.get(f"/job-runs/{RUN}").mock(side_effect=httpx.ConnectError("connection refused"))
    with pytest.raises(ExecutorConnectionError):
        await executor.check_status(RUN)


async def test_timeout_stops_the_run(executor: ScalewayExecutor, api: respx.MockRouter) -> None:
    job = make_job("sleep 100", timeout_seconds=1)
    await launch(executor, api, job)
    launched_at, timeout = executor._launches[RUN]
    executor._launches[RUN] = (launched_at - 5, timeout)  # as if launched 5 s ago
    api.get(f"/job-runs/{RUN}").respond(200, json=job_run("running"))
    stop = api.post(f"/job-runs/{RUN}/stop").respond(200, json=job_run("canceled"))
    status = await executor.check_status(RUN)
    assert (status.state, status.reason) == ("exited", "timeout")
    assert stop.called
    api.get(f"/job-runs/{RUN}").respond(200, json=job_run("canceled"))
    assert (await executor.harvest_job(job)).status == "timeout"


async def test_cleanup_stops_a_running_run(
    executor: ScalewayExecutor, api: respx.MockRouter
) -> None:
    api.get(f"/job-runs/{RUN}").respond(200, json=job_run("running"))
    stop = api.post(f"/job-runs/{RUN}/stop").respond(200, json=job_run("canceled"))
    assert await executor.cleanup(RUN) is True
    assert stop.called


async def test_health_and_capabilities(executor: ScalewayExecutor, api: respx.MockRouter) -> None:
    api.get(f"/job-definitions/{DEFINITION}").respond(200, json={"id": DEFINITION})
    health = await executor.get_health_status()
    assert (health["healthy"], health["error"]) == (True, None)
    capabilities = await executor.get_capabilities()
    assert capabilities["supports_resource_limits"] is False
    assert "Cockpit" in capabilities["logs"]


async def test_credentials_never_leak(
    executor: ScalewayExecutor, api: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    job = make_job()
    api.post(f"/job-definitions/{DEFINITION}/start").respond(
        200, json={"job_runs": [job_run("queued")]}
    )
    result = await executor.launch_job(job, {})
    job.set_execution_identifier(result.execution_id)
    api.get(f"/job-runs/{RUN}").respond(200, json=job_run("succeeded", exit_code=0))
    harvest = await executor.harvest_job(job)
    # A server that echoes the token back must not get it into our messages.
    api.post(f"/job-definitions/{DEFINITION}/start").respond(
        401, json={"message": f"token {SECRET} is invalid"}
    )
    with pytest.raises(ExecutorError) as caught:
        await executor.launch_job(job, {})
    api.get(f"/job-definitions/{DEFINITION}").respond(500, json={"message": SECRET})
    seen = " ".join(
        [
            repr(result),
            repr(harvest),
            str(caught.value),
            repr(await executor.get_capabilities()),
            repr(await executor.get_health_status()),
            repr(executor.host),
            caplog.text,
        ]
    )
    assert SECRET not in seen
    assert "***" in str(caught.value)
