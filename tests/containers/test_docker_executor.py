"""DockerExecutor against a real engine (scripts/docker-ci.sh starts a private one)."""

from __future__ import annotations

import asyncio

import docker
import pytest

from src.services.containers.executors.base import HarvestResult
from src.services.containers.executors.docker import LABEL, DockerExecutor
from src.services.containers.executors.errors import (
    ExecutorConnectionError,
    ExecutorResourceError,
)
from src.services.domain.containers import ContainerJob, ExecutorHost
from tests.conftest import DOCKER_IMAGE
from tests.containers.conftest import make_host, make_job


def docker_job(command: str, **fields: object) -> ContainerJob:
    return make_job(command, "docker", docker_image=DOCKER_IMAGE, **fields)


async def run_to_end(executor: DockerExecutor, job: ContainerJob) -> HarvestResult:
    launched = await executor.launch_job(job, {"GREETING": "hello"})
    job.set_execution_identifier(launched.execution_id)
    for _ in range(300):
        status = await executor.check_status(launched.execution_id)
        if status.state != "running":
            break
        await asyncio.sleep(0.1)
    result = await executor.harvest_job(job)
    assert await executor.cleanup(launched.execution_id)
    return result


@pytest.fixture
async def executor(docker_host: ExecutorHost) -> DockerExecutor:
    executor = DockerExecutor(docker_host)
    yield executor  # type: ignore[misc]  # an async generator fixture typed as its value
    await executor.aclose()


async def test_success_separates_stdout_and_stderr(executor: DockerExecutor) -> None:
    result = await run_to_end(executor, docker_job('echo "$GREETING out"; echo oops >&2'))
    assert (result.status, result.exit_code) == ("completed", 0)
    assert result.stdout == "hello out\n"
    assert result.stderr == "oops\n"
    assert result.started_at is not None and result.finished_at is not None
    assert result.finished_at >= result.started_at


async def test_non_zero_exit_fails(executor: DockerExecutor) -> None:
    result = await run_to_end(executor, docker_job("exit 3"))
    assert (result.status, result.exit_code) == ("failed", 3)


async def test_oom_kill_fails_with_reason(executor: DockerExecutor) -> None:
    # 16 MB limit; dd tries to hold a 64 MB block in memory.
    job = docker_job("dd if=/dev/zero of=/dev/null bs=64M count=1", memory_limit=16)
    result = await run_to_end(executor, job)
    assert result.status == "failed"
    assert result.reason == "out of memory"
    assert result.exit_code == 137


async def test_timeout_stops_the_container(executor: DockerExecutor) -> None:
    result = await run_to_end(executor, docker_job("sleep 30", timeout_seconds=1))
    assert result.status == "timeout"
    assert result.reason == "timeout"


async def test_missing_image_is_a_clear_launch_error(executor: DockerExecutor) -> None:
    job = make_job("true", "docker", docker_image="bulkjobs-no-such-image:never")
    with pytest.raises(ExecutorResourceError, match="bulkjobs-no-such-image:never"):
        await executor.launch_job(job, {})


async def test_daemon_down_is_a_transient_connection_error(tmp_path: object) -> None:
    host = make_host("docker", connection_string="unix:///tmp/bulkjobs-no-daemon.sock")
    executor = DockerExecutor(host)
    try:
        with pytest.raises(ExecutorConnectionError, match="unreachable") as raised:
            await executor.launch_job(docker_job("true"), {})
        assert raised.value.transient
        health = await executor.get_health_status()
        assert health["healthy"] is False and "unreachable" in health["error"]
    finally:
        await executor.aclose()


async def test_cleanup_leaves_no_container(executor: DockerExecutor, docker_url: str) -> None:
    job = docker_job("sleep 30")
    launched = await executor.launch_job(job, {})
    assert (await executor.check_status(launched.execution_id)).state == "running"
    managed = {item["execution_id"] for item in await executor.list_managed()}
    assert launched.execution_id in managed
    assert await executor.cleanup(launched.execution_id)
    client = docker.DockerClient(base_url=docker_url, version="auto")
    try:
        left = client.containers.list(all=True, filters={"label": f"{LABEL}=true"})
        assert launched.execution_id not in {c.id for c in left}
    finally:
        client.close()
    assert (await executor.check_status(launched.execution_id)).state == "not-found"


async def test_limits_and_labels_are_applied(executor: DockerExecutor, docker_url: str) -> None:
    job = docker_job("sleep 5", memory_limit=64, cpu_limit=0.5)
    launched = await executor.launch_job(job, {})
    client = docker.DockerClient(base_url=docker_url, version="auto")
    try:
        attrs = client.containers.get(launched.execution_id).attrs
    finally:
        client.close()
        await executor.cleanup(launched.execution_id)
    config = attrs["HostConfig"]
    assert config["Memory"] == 64 * 1024 * 1024
    assert config["NanoCpus"] == 500_000_000
    assert config["PidsLimit"] == 256
    assert config["NetworkMode"] == "none"
    assert attrs["Config"]["Labels"]["bulkjobs.job_id"] == job.id


async def test_health_reports_the_engine_version(executor: DockerExecutor) -> None:
    health = await executor.get_health_status()
    assert health["healthy"] is True
    assert health["api_version"]


async def test_tls_client_ignores_environment_ca(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("DOCKER_CERT_PATH", "/nonexistent/certs")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    host = make_host(
        "docker",
        host_type="tcp",
        connection_string="tcp://127.0.0.1:1",
        tls_enabled=True,
        tls_verify=False,
    )
    tls = DockerExecutor(host)._tls()
    assert not isinstance(tls, bool)
    assert tls.ca_cert is None and tls.verify is False
