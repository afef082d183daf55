"""LocalExecutor: runs a job's command as a process on this machine (the embedded default).

The command runs under `/bin/sh -c` in its own session, below a small supervisor
(local_supervisor.py, a child subreaper) that kills every process the command started when
it ends, times out or is cancelled -- also those that left its group with `setsid`. The
supervisors are forked by one fork server per service process (started on first use), so a
job costs a fork rather than a Python start. Each process gets an address-space limit
(memory_limit) and a CPU-time limit (timeout x CPUs).
Output goes to files in a work directory; the exit code is written to a file too, so a
processor that restarts can still harvest a job it did not launch. It isolates nothing
else: no filesystem, network or user separation (see get_capabilities).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
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
from src.services.containers.executors.config import ExecutorConfig, Text
from src.services.containers.executors.errors import ExecutorResourceError
from src.services.domain import from_epoch, utcnow
from src.services.domain.containers import ContainerJob, ExecutorHost

#: The supervisor writes the command's exit status to EXIT_FILE and its own pid to PID_FILE
#: in the job's work directory (a stopped job leaves no exit file), so a processor that
#: restarts can still harvest a job it did not launch. The limits are set by the supervisor,
#: not by a preexec_fn: a spawn with a preexec_fn forks this large Python process and blocks
#: the event loop for ~20 ms.
EXIT_FILE, PID_FILE = "exit_code", "pid"
#: Headroom for the shell and the C library above the job's own memory limit.
MEMORY_OVERHEAD_MB = 32
SUPERVISOR = str(Path(__file__).with_name("local_supervisor.py"))
#: Seconds the supervisor gets to kill the command's processes before it is killed itself.
STOP_GRACE_S = 10.0
#: Seconds a new supervisor gets to report its pid (it is one fork away).
START_TIMEOUT_S = 10.0


class _ForkServer:
    """The process that forks every job's supervisor (local_supervisor.py): one per service
    process, started on first use and again if it died. It ends by itself when this process
    does (its control socket closes); supervisors it forked go on to finish their jobs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._owner = 0

    def send(self, stdout: int, stderr: int, channel: int) -> None:
        """Ask for a supervisor of a job with these descriptors (a second server if the
        first one is gone)."""
        for _ in range(2):
            control = self._running()
            try:
                socket.send_fds(control, [b"j"], [stdout, stderr, channel])
                return
            except OSError:  # dead, or alive but not accepting: it is not asked again
                self._forget()
                if self._process is not None:
                    self._process.kill()
        raise ExecutorResourceError("the local executor's fork server is not accepting jobs")

    def _running(self) -> socket.socket:
        with self._lock:
            alive = self._process is not None and self._process.poll() is None
            if self._control is None or not alive or self._owner != os.getpid():
                self._start()
            assert self._control is not None
            return self._control

    def _start(self) -> None:
        if self._control is not None:  # the last server's, dead or inherited through a fork
            self._control.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            fd = theirs.fileno()
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", SUPERVISOR, str(fd)],
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
                # Not in our process group: a Ctrl-C meant for the service is not its concern.
                start_new_session=True,
            )
        ours.settimeout(START_TIMEOUT_S)
        self._control, self._owner = ours, os.getpid()

    def _forget(self) -> None:
        with self._lock:
            if self._control is not None:
                self._control.close()
            self._control = None

    def close(self) -> None:
        """At exit: the server ends on its closed control socket (its jobs go on)."""
        self._forget()
        if self._process is not None and self._owner == os.getpid():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(STOP_GRACE_S)


FORK_SERVER = _ForkServer()
atexit.register(FORK_SERVER.close)


class _Supervised:
    """A job's supervisor, seen through its channel: its pid, then how it ended."""

    def __init__(self, pid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.pid = pid
        self.returncode: int | None = None
        #: The command's peak resident memory in KiB, once it ended.
        self.max_rss_kib: int | None = None
        self._writer = writer
        self._ended = asyncio.ensure_future(self._read_end(reader))

    async def _read_end(self, reader: asyncio.StreamReader) -> None:
        try:
            line = await reader.readline()
        finally:
            self._writer.close()
        if not line:  # killed before it could report (a SIGKILL to its group)
            self.returncode = 128 + signal.SIGKILL
            return
        code, max_rss = line.split()
        self.returncode, self.max_rss_kib = int(code), int(max_rss)

    async def wait(self) -> int:
        await asyncio.shield(self._ended)
        assert self.returncode is not None
        return self.returncode

    def terminate(self) -> None:
        os.kill(self.pid, signal.SIGTERM)


def _hand_over(workdir: Path) -> socket.socket:
    """Create the job's folder and log files and hand them, with one end of a new channel,
    to the fork server; returns our end. Blocking file and socket calls: run in a thread, so
    that the event loop other jobs share does not wait on the filesystem."""
    workdir.mkdir(parents=True)
    ours, theirs = socket.socketpair()
    try:
        # The supervisor gets its own copies of the descriptors; ours close after.
        with theirs, (workdir / "stdout").open("wb") as out, (workdir / "stderr").open("wb") as err:
            FORK_SERVER.send(out.fileno(), err.fileno(), theirs.fileno())
    except BaseException:
        ours.close()
        raise
    return ours


async def _supervise(request: dict[str, Any], workdir: Path) -> _Supervised:
    """Have the fork server start a supervisor for `request` (see local_supervisor.py)."""
    ours = await asyncio.to_thread(_hand_over, workdir)
    try:
        reader, writer = await asyncio.open_unix_connection(sock=ours)
    except BaseException:
        ours.close()
        raise
    writer.write(json.dumps(request).encode() + b"\n")
    await writer.drain()
    try:
        line = await asyncio.wait_for(reader.readline(), START_TIMEOUT_S)
    except TimeoutError:
        line = b""
    if not line.strip().isdigit():
        writer.close()
        raise ExecutorResourceError("the local supervisor did not start the job")
    return _Supervised(int(line), reader, writer)


class _Run:
    def __init__(self, process: _Supervised, workdir: Path, deadline: float) -> None:
        self.process = process
        self.workdir = workdir
        self.deadline = deadline
        self.timed_out = False
        self.watchdog: asyncio.Task[None] | None = None


class LocalConfig(ExecutorConfig):
    #: Where job output files go (default: BULKJOBS_LOCAL_WORK_DIR or the temp dir).
    work_dir: Text | None = None


class LocalExecutor:
    executor_type = "local"
    config_model = LocalConfig

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
        process = await _supervise(_request(job, _environment(env, workdir), workdir), workdir)
        run = _Run(process, workdir, time.monotonic() + job.timeout_seconds)
        run.watchdog = asyncio.create_task(
            self._enforce_timeout(run), name=f"timeout-{execution_id}"
        )
        self._runs[execution_id] = run
        return LaunchResult(execution_id, {"pid": process.pid, "workdir": str(workdir)})

    async def _enforce_timeout(self, run: _Run) -> None:
        try:
            await asyncio.wait_for(run.process.wait(), max(0.0, run.deadline - time.monotonic()))
        except TimeoutError:
            run.timed_out = True
            await _stop_run(run.process)

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
        return _exit_status(code)

    def _status_from_files(self, execution_id: str) -> ExecutionStatus:
        """A job launched by another processor (this one restarted): read what it left."""
        workdir = self._workdir(execution_id)
        if not workdir.is_dir():
            return ExecutionStatus("not-found")
        exit_file = workdir / EXIT_FILE
        if exit_file.exists():
            return _exit_status(int(exit_file.read_text().strip() or 1))
        pid = int((workdir / PID_FILE).read_text())
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
        # Up to 2 MiB each: read in a thread, not on the event loop the other jobs share.
        return await asyncio.to_thread(_read_logs, self._workdir(execution_id))

    async def harvest_job(self, job: ContainerJob) -> HarvestResult:
        execution_id = job.get_execution_identifier()
        run = self._runs.get(execution_id)
        if run is not None:
            await run.process.wait()
            if run.watchdog is not None:
                await run.watchdog
        status = await self.check_status(execution_id)
        stdout, stderr = await self.get_logs(execution_id)
        max_rss = run.process.max_rss_kib if run is not None else None
        return HarvestResult(
            status=final_status(status.exit_code, status.reason),
            exit_code=status.exit_code,
            stdout=stdout,
            stderr=stderr,
            started_at=_started(self._workdir(execution_id)),
            finished_at=utcnow(),
            # The command's peak RSS (KiB on Linux); unknown for a job another processor ran.
            max_memory_usage=max_rss * 1024 if max_rss is not None else None,
            reason=status.reason,
        )

    async def stop(self, execution_id: str) -> None:
        """Kill every process of the job, keeping its output files for the harvest."""
        run = self._runs.get(execution_id)
        if run is not None:
            run.timed_out = True
            await _stop_run(run.process)
        else:
            await _stop_pid(_pid_of(self._workdir(execution_id)))

    async def cleanup(self, execution_id: str) -> bool:
        run = self._runs.pop(execution_id, None)
        workdir = self._workdir(execution_id)
        if run is not None:
            await _stop_run(run.process)
            if run.watchdog is not None:
                run.watchdog.cancel()
        else:
            await _stop_pid(_pid_of(workdir))
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
            " and network; memory (address space) and CPU time are limited per process, and"
            " every process it starts is killed at its end, timeout or cancel",
        }

    async def aclose(self) -> None:
        for execution_id in list(self._runs):
            await self.cleanup(execution_id)


def _check_working_directory(job: ContainerJob) -> None:
    if job.working_directory and not Path(job.working_directory).is_dir():
        raise ExecutorResourceError(f"working_directory {job.working_directory} does not exist")


def _environment(env: dict[str, str], workdir: Path) -> dict[str, str]:
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
    }
    return base | env


def _request(job: ContainerJob, env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """What the supervisor runs: the command under a shell, its environment, directory and
    limits, and where it leaves its pid and the command's exit status."""
    memory = (job.memory_limit + MEMORY_OVERHEAD_MB) * 1024 * 1024 if job.memory_limit else 0
    return {
        "argv": ["/bin/sh", "-c", job.command],
        "env": env,
        "cwd": str(job.working_directory or workdir),
        "pid_file": str(workdir / PID_FILE),
        "exit_file": str(workdir / EXIT_FILE),
        "address_space": memory,
        "cpu_seconds": math.ceil(job.timeout_seconds * (job.cpu_limit or 1.0)),
    }


def _exit_status(code: int) -> ExecutionStatus:
    if code == 128 + signal.SIGXCPU or code == -signal.SIGXCPU:
        return ExecutionStatus("exited", code, "cpu time limit exceeded")
    if code == 128 + signal.SIGKILL:
        return ExecutionStatus("exited", code, "killed")
    return ExecutionStatus("exited", code)


async def _stop_run(process: _Supervised) -> None:
    """Ask the supervisor to kill everything and wait; kill its group if it does not end."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), STOP_GRACE_S)
    except TimeoutError:
        _kill_group(process.pid)
        await process.wait()


async def _stop_pid(pid: int | None) -> None:
    """The same for a supervisor another processor started (no handle to wait on)."""
    if pid is None or not _alive(pid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(int(STOP_GRACE_S / 0.05)):
        if not _alive(pid):
            return
        await asyncio.sleep(0.05)
    _kill_group(pid)


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
        return int((workdir / PID_FILE).read_text())
    return None


def _read_logs(workdir: Path) -> tuple[str, str]:
    return _read_log(workdir / "stdout"), _read_log(workdir / "stderr")


def _read_log(path: Path) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - 2 * 1024 * 1024))
        return cap_log(handle.read().decode(errors="replace"))


def _started(workdir: Path) -> datetime | None:
    with contextlib.suppress(OSError):
        return from_epoch((workdir / PID_FILE).stat().st_mtime)
    return None


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
