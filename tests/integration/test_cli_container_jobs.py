"""The container commands of the CLI against a real SQLite file (and Docker for orphans)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from typer.testing import CliRunner

from src.cli import app
from src.config import get_settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.containers.executors.docker import DockerExecutor
from src.services.containers.service import ContainerJobService
from tests.conftest import DOCKER_IMAGE
from tests.containers.conftest import make_host, make_job

T = TypeVar("T")
runner = CliRunner()


@pytest.fixture(autouse=True)
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("BULKJOBS_DB_PATH", str(tmp_path / "cli.db"))
    monkeypatch.setenv("BULK_EXPORT_PATH", str(tmp_path / "exports"))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def with_service(fn: Callable[[ContainerJobService], Awaitable[T]]) -> T:
    async def main() -> T:
        manager = BulkJobManager(get_settings())
        service = ContainerJobService(manager)
        try:
            return await fn(service)
        finally:
            await service.aclose()
            await manager.aclose()

    return asyncio.run(main())


async def statuses(service: ContainerJobService) -> list[str]:
    return sorted(job.status.value for job in await service.list_jobs(limit=100))


def test_sample_data_then_process_once() -> None:
    created = runner.invoke(app, ["create_sample_data", "--jobs", "10"])
    assert created.exit_code == 0, created.output
    assert "created 10 sample container jobs on mock" in created.stdout
    options = ["--once", "--poll-interval", "0.05", "--max-concurrent", "8"]
    processed = runner.invoke(app, ["process_container_jobs", *options])
    assert processed.exit_code == 0, processed.output
    assert "processed 10 container jobs" in processed.stdout
    found = with_service(statuses)
    assert found.count("completed") == 6 and found.count("failed") == 4  # exit 1 and oom


def test_cleanup_removes_old_finished_jobs_only() -> None:
    async def seed(service: ContainerJobService) -> None:
        store = await service.store()
        old = make_job("true", status="completed", host_id="local")
        old.created_at = old.created_at.replace(year=2020)
        running_old = make_job("true", status="running", host_id="local")
        running_old.created_at = running_old.created_at.replace(year=2020)
        await store.container_create_batch([old, running_old, make_job("true", status="failed")])

    with_service(seed)
    dry = runner.invoke(app, ["cleanup_containers", "--days", "30", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would remove 1 old container jobs" in dry.stdout
    real = runner.invoke(app, ["cleanup_containers", "--days", "30"])
    assert "removed 1 old container jobs" in real.stdout
    assert with_service(statuses) == ["failed", "running"]
    forced = runner.invoke(app, ["cleanup_containers", "--days", "30", "--force"])
    assert "1 stale jobs stopped" in forced.stdout
    # --force cancelled the stale job, which then counted as old and finished: removed too.
    assert with_service(statuses) == ["failed"]


def test_cleanup_removes_orphaned_containers(docker_url: str) -> None:
    async def launch_orphan(service: ContainerJobService) -> str:
        host = await service.create_host(
            name="engine", executor_type="docker", connection_string=docker_url
        )
        executor = DockerExecutor(host)
        try:
            job = make_job("sleep 30", "docker", docker_image=DOCKER_IMAGE)  # never stored
            return (await executor.launch_job(job, {})).execution_id
        finally:
            await executor.aclose()

    orphan = with_service(launch_orphan)
    result = runner.invoke(app, ["cleanup_containers", "--days", "1"])
    assert result.exit_code == 0, result.output
    # At least ours: the engine may hold other orphans (an earlier run's, killed mid-test).
    removed = re.search(r"(\d+) orphaned containers", result.stdout)
    assert removed is not None and int(removed.group(1)) >= 1, result.stdout

    async def status(_: ContainerJobService) -> str:
        executor = DockerExecutor(make_host("docker", connection_string=docker_url))
        try:
            return (await executor.check_status(orphan)).state
        finally:
            await executor.aclose()

    assert with_service(status) == "not-found"
