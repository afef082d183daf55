"""LocalExecutor: runs a job's command as a process on this machine (the embedded default).

The command runs under `/bin/sh -c` in its own process group, with an address-space limit
(memory_limit), a CPU-time limit (timeout x CPUs) and a wall-clock timeout that kills the
whole group. Output goes to files in a work directory; the exit code is written to a file
too, so a processor that restarts can still harvest a job it did not launch. It isolates
nothing else: no filesystem, network or user separation (see get_capabilities).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import signal
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from src.services.containers.executors.base import (
    ExecutionStatus,
    HarvestResult,
    LaunchResult,
    cap_log,
    final_status,
)
from src.services.containers.executors.errors import ExecutorResourceError
from src.services.containers.models import ContainerJob, ExecutorHost
from src.services.domain import from_epoch, utcnow

#: The wrapper records the command's exit status; a killed group leaves no file.
WRAPPER = '/bin/sh -c "$BULKJOBS_COMMAND"; echo $? > "$BULKJOBS_EXIT_FILE"'
#: Headroom for the shell and the C library above the job's own memory limit.
MEMORY_OVERHEAD_MB = 32


class _Run:
    def __init__(self, process: asyncio.subprocess.Process, workdir: Path, deadline: float) -> None:
        self.process = process
        self.workdir = workdir
        self.deadline = deadline
        self.timed_out = False
        self.watchdog: asyncio.Task[None] | None = None


class LocalExecutor:
    executor_type = "local"

    def __init__(self, host: ExecutorHost, work_root: Path | None = None) -> None:
        self.host = host
        root = host.executor_config.get("work_dir") or work_root
        self.work_root = Path(root) if root else Path(tempfile.gettempdir()) / "bulkjobs-local"
        self._runs: dict[str, _Run] = {}

    def _workdir(self, execution_id: str) -> Path:
        return self.work_root / execution_id

    async def launch_job(self, job: ContainerJob, env: dict[str, str]) -> LaunchResult:
        _check_working_directory(job)
        execution_id = f"local-{uuid.uuid4().hex[:16]}"
        workdir = self._workdir(execution_id)
        workdir.mkdir(parents=True)
        # The child keeps its own copies of the log descriptors; ours close after the spawn.
        with (workdir / "stdout").open("wb") as out, (workdir / "stderr").open("wb") as err:
            process = await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                WRAPPER,
                stdout=out,
                stderr=err,
                stdin=asyncio.subprocess.DEVNULL,
                cwd=job.working_directory or workdir,
                env=_environment(env, job.command, workdir),
                start_new_session=True,
                preexec_fn=_limits(job),
            )
        run = _Run(process, workdir, time.monotonic() + job.timeout_seconds)
        run.watchdog = asyncio.create_task(
            self._enforce_timeout(run), name=f"timeout-{execution_id}"
        )
        self._runs[execution_id] = run
        (workdir / "pid").write_text(str(process.pid))
        return LaunchResult(execution_id, {"pid": process.pid, "workdir": str(workdir)})

    async def _enforce_timeout(self, run: _Run) -> None:
        try:
            await asyncio.wait_for(run.process.wait(), max(0.0, run.deadline - time.monotonic()))
        except TimeoutError:
            run.timed_out = True
            _kill_group(run.process.pid)
            await run.process.wait()

    async def check_status(self, execution_id: str) -> ExecutionStatus:
        run = self._runs.get(execution_id)
        if run is not None:
            return self._status_of_run(run)
        return self._status_from_files(execution_id)

    def _status_of_run(self, run: _Run) -> ExecutionStatus:
        code = run.process.returncode
        if code is None:
            return ExecutionStatus("running")
        if run.timed_out:
            return ExecutionStatus("exited", None, "timeout")
        exit_file = run.workdir / "exit_code"
        if exit_file.exists():
            return _exit_status(int(exit_file.read_text().strip() or 1))
        return _exit_status(128 - code if code < 0 else code)

    def _status_from_files(self, execution_id: str) -> ExecutionStatus:
        """A job launched by another processor (this one restarted): read what it left."""
        workdir = self._workdir(execution_id)
        if not workdir.is_dir():
            return ExecutionStatus("not-found")
        exit_file = workdir / "exit_code"
        if exit_file.exists():
            return _exit_status(int(exit_file.read_text().strip() or 1))
        pid = int((workdir / "pid").read_text())
        return (
            ExecutionStatus("running") if _alive(pid) else ExecutionStatus("failed", None, "lost")
        )

    async def wait_for_exit(self, execution_id: str, timeout_s: float) -> None:
        """Return when the process ends or after `timeout_s`, whichever comes first (lets
        the processor notice a quick job at once instead of at its next poll)."""
        run = self._runs.get(execution_id)
        if run is None:
            await asyncio.sleep(timeout_s)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(run.process.wait()), timeout_s)

    async def get_logs(self, execution_id: str) -> tuple[str, str]:
        workdir = self._workdir(execution_id)
        return _read_log(workdir / "stdout"), _read_log(workdir / "stderr")

    async def harvest_job(self, job: ContainerJob) -> HarvestResult:
        execution_id = job.get_execution_identifier()
        run = self._runs.get(execution_id)
        if run is not None:
            await run.process.wait()
            if run.watchdog is not None:
                await run.watchdog
        status = await self.check_status(execution_id)
        stdout, stderr = await self.get_logs(execution_id)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return HarvestResult(
            status=final_status(status.exit_code, status.reason),
            exit_code=status.exit_code,
            stdout=stdout,
            stderr=stderr,
            started_at=_started(self._workdir(execution_id)),
            finished_at=utcnow(),
            # ru_maxrss of all children so far: an upper bound, in KiB on Linux.
            max_memory_usage=usage.ru_maxrss * 1024,
            reason=status.reason,
        )

    async def stop(self, execution_id: str) -> None:
        """Kill the process group, keeping its output files for the harvest."""
        run = self._runs.get(execution_id)
        pid = run.process.pid if run else _pid_of(self._workdir(execution_id))
        if pid is not None:
            _kill_group(pid)
        if run is not None:
            run.timed_out = True
            with contextlib.suppress(ProcessLookupError):
                await run.process.wait()

    async def cleanup(self, execution_id: str) -> bool:
        run = self._runs.pop(execution_id, None)
        workdir = self._workdir(execution_id)
        pid = run.process.pid if run else _pid_of(workdir)
        if pid is not None:
            _kill_group(pid)
        if run is not None:
            with contextlib.suppress(ProcessLookupError):
                await run.process.wait()
            if run.watchdog is not None:
                run.watchdog.cancel()
        await asyncio.to_thread(_remove_tree, workdir)
        return True

    async def get_health_status(self) -> dict[str, Any]:
        started = time.perf_counter()
        self.work_root.mkdir(parents=True, exist_ok=True)
        healthy = os.access(self.work_root, os.W_OK)
        return {
            "healthy": healthy,
            "error": None if healthy else f"{self.work_root} is not writable",
            "response_time": time.perf_counter() - started,
        }

    async def get_capabilities(self) -> dict[str, Any]:
        return {
            "supports_resource_limits": True,
            "supports_networking": False,
            "supports_persistent_storage": True,
            "supports_secrets": False,
            "supports_gpu": False,
            "supports_scaling": False,
            # Honest about what a process on the host does not get.
            "isolation": "none: the command runs as this service's user, on its filesystem"
            " and network; memory (address space), CPU time and wall clock are limited",
        }

    async def aclose(self) -> None:
        for execution_id in list(self._runs):
            await self.cleanup(execution_id)


def _check_working_directory(job: ContainerJob) -> None:
    if job.working_directory and not Path(job.working_directory).is_dir():
        raise ExecutorResourceError(f"working_directory {job.working_directory} does not exist")


def _environment(env: dict[str, str], command: str, workdir: Path) -> dict[str, str]:
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
    }
    return (
        base | env | {"BULKJOBS_COMMAND": command, "BULKJOBS_EXIT_FILE": str(workdir / "exit_code")}
    )


def _limits(job: ContainerJob) -> Any:
    memory = (job.memory_limit + MEMORY_OVERHEAD_MB) * 1024 * 1024 if job.memory_limit else None
    cpu_seconds = math.ceil(job.timeout_seconds * (job.cpu_limit or 1.0))

    def apply() -> None:  # runs in the child, between fork and exec
        if memory:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))

    return apply


def _exit_status(code: int) -> ExecutionStatus:
    if code == 128 + signal.SIGXCPU or code == -signal.SIGXCPU:
        return ExecutionStatus("exited", code, "cpu time limit exceeded")
    if code == 128 + signal.SIGKILL:
        return ExecutionStatus("exited", code, "killed")
    return ExecutionStatus("exited", code)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_of(workdir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((workdir / "pid").read_text())
    return None


def _read_log(path: Path) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - 2 * 1024 * 1024))
        return cap_log(handle.read().decode(errors="replace"))


def _started(workdir: Path) -> datetime | None:
    with contextlib.suppress(OSError):
        return from_epoch((workdir / "pid").stat().st_mtime)
    return None


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
