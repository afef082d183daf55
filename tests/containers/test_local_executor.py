"""The local executor's limits really stop a process: memory, CPU time and wall clock."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from src.services.containers.executors.base import HarvestResult
from src.services.containers.executors.local import LocalExecutor
from src.services.containers.models import ContainerJob
from tests.containers.conftest import make_host, make_job


async def run(tmp_path: Path, job: ContainerJob) -> HarvestResult:
    executor = LocalExecutor(make_host("local", executor_config={"work_dir": str(tmp_path)}))
    launched = await executor.launch_job(job, {})
    job.set_execution_identifier(launched.execution_id)
    result = await asyncio.wait_for(executor.harvest_job(job), 30)
    await executor.cleanup(launched.execution_id)
    assert not (tmp_path / launched.execution_id).exists()
    return result


async def test_memory_limit_stops_an_allocation(tmp_path: Path) -> None:
    grab = f"{sys.executable} -c \"b = bytearray(400 * 1024 * 1024); print('allocated')\""
    limited = await run(tmp_path, make_job(grab, memory_limit=100))
    assert limited.status == "failed"
    assert "MemoryError" in limited.stderr and "allocated" not in limited.stdout
    unlimited = await run(tmp_path, make_job(grab))
    assert unlimited.status == "completed" and unlimited.stdout == "allocated\n"


async def test_cpu_time_limit_stops_a_busy_loop(tmp_path: Path) -> None:
    # 3 s of wall clock at 0.34 CPUs allows ceil(1.02) = 2 s of CPU time.
    job = make_job("while :; do :; done", timeout_seconds=3, cpu_limit=0.34)
    result = await run(tmp_path, job)
    assert result.status == "failed"
    assert result.reason == "cpu time limit exceeded"


async def test_wall_clock_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    job = make_job("sleep 30 & sleep 30; wait", timeout_seconds=1)
    result = await run(tmp_path, job)
    assert (result.status, result.reason) == ("timeout", "timeout")


async def test_output_and_exit_code_are_captured(tmp_path: Path) -> None:
    result = await run(tmp_path, make_job("echo out; echo err >&2; exit 5"))
    assert (result.status, result.exit_code) == ("failed", 5)
    assert (result.stdout, result.stderr) == ("out\n", "err\n")
    assert result.max_memory_usage and result.max_memory_usage > 0


async def test_a_missing_working_directory_is_a_launch_error(tmp_path: Path) -> None:
    executor = LocalExecutor(make_host("local", executor_config={"work_dir": str(tmp_path)}))
    job = make_job("true", working_directory="/no/such/dir")
    try:
        await executor.launch_job(job, {})
    except Exception as exc:
        assert "working_directory" in str(exc)
    else:
        raise AssertionError("launch should have failed")
    capabilities = await executor.get_capabilities()
    assert capabilities["isolation"].startswith("none")
