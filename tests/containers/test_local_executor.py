"""The local executor's limits really stop a process: memory, CPU time and wall clock."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from src.services.containers.executors.base import HarvestResult
from src.services.containers.executors.local import FORK_SERVER, LocalExecutor
from src.services.domain.containers import ContainerJob
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
    # 20 s of wall clock at 0.1 CPUs allows 2 s of CPU time: reached long before the
    # timeout even on a machine busy enough to give the loop a fifth of a core.
    job = make_job("while :; do :; done", timeout_seconds=20, cpu_limit=0.1)
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


def alive(pid: int) -> bool:
    """Whether the process exists (a zombie nobody reaped counts as gone: it runs nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


ESCAPE = (
    'setsid sleep 1000 & echo $! > "$HOME/escaped";'
    " (setsid sh -c 'echo $$ > \"$HOME/forked\"; exec sleep 1000' &);"
    ' while [ ! -s "$HOME/forked" ]; do sleep 0.01; done;'
)


async def escapees(
    tmp_path: Path, command: str, cancel: bool = False, **fields: object
) -> tuple[str, list[int]]:
    """Run a job whose command leaves processes outside its group (setsid, a double fork);
    returns how it ended and the pids of those processes."""
    executor = LocalExecutor(make_host("local", executor_config={"work_dir": str(tmp_path)}))
    launched = await executor.launch_job(make_job(ESCAPE + command, **fields), {})
    workdir = tmp_path / launched.execution_id
    pids: list[int] = []
    try:
        job = make_job("", external_execution_id=launched.execution_id)
        if cancel:
            for _ in range(1500):  # until both escapees are running (bounded: 30 s)
                if (workdir / "forked").exists() and (workdir / "forked").read_text():
                    break
                await asyncio.sleep(0.02)
            await executor.stop(launched.execution_id)
        result = await asyncio.wait_for(executor.harvest_job(job), 30)
        pids = [int((workdir / name).read_text()) for name in ("escaped", "forked")]
        return result.status, [pid for pid in pids if alive(pid)]
    finally:
        for pid in pids:  # never leave a process behind, even when the test fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await executor.cleanup(launched.execution_id)


async def test_a_timeout_kills_processes_that_left_the_group(tmp_path: Path) -> None:
    status, survivors = await escapees(tmp_path, "sleep 1000", timeout_seconds=1)
    assert (status, survivors) == ("timeout", [])


async def test_the_end_of_a_job_kills_what_it_left_running(tmp_path: Path) -> None:
    status, survivors = await escapees(tmp_path, "echo done")
    assert (status, survivors) == ("completed", [])


async def test_a_cancel_kills_processes_that_left_the_group(tmp_path: Path) -> None:
    status, survivors = await escapees(tmp_path, "sleep 1000", cancel=True)
    assert (status, survivors) == ("timeout", [])


async def test_a_reader_that_stops_early_ends_the_writer_quietly(tmp_path: Path) -> None:
    # SIGPIPE has its default action in the command, not the one Python gives itself.
    result = await run(tmp_path, make_job("yes | head -n 1"))
    assert (result.status, result.stdout) == ("completed", "y\n")
    assert "Broken pipe" not in result.stderr


async def test_a_dead_fork_server_is_replaced_at_the_next_launch(tmp_path: Path) -> None:
    await run(tmp_path, make_job("true"))
    server = FORK_SERVER._process
    assert server is not None
    server.kill()
    server.wait()
    result = await run(tmp_path, make_job("echo again"))
    assert (result.status, result.stdout) == ("completed", "again\n")
    assert FORK_SERVER._process is not server
