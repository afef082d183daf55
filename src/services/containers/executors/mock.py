"""MockExecutor: deterministic outcomes for tests and demos, no containers involved.

The command decides what happens: `exit N` ends with code N, `sleep S` takes S seconds,
`echo TEXT` prints TEXT, `fail-launch` raises a transient launch error (each attempt),
`oom` ends as out of memory; anything else succeeds at once. executor_config may set
`delay_s` for every job, `healthy: false` to fail health checks and `fail_launch: true` to
fail every launch as an unreachable backend would (a host that is down, for failover tests).
"""

from __future__ import annotations

import asyncio
import shlex
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import ConfigDict, Field

from src.services.containers.executors.base import (
    ExecutionStatus,
    HarvestResult,
    LaunchResult,
    final_status,
)
from src.services.containers.executors.config import ExecutorConfig
from src.services.containers.executors.errors import ExecutorConnectionError
from src.services.domain import utcnow
from src.services.domain.containers import ContainerJob, ExecutorHost


@dataclass
class _Run:
    ends_at: float
    exit_code: int
    stdout: str
    reason: str = ""
    env: dict[str, str] = field(default_factory=dict)


class MockConfig(ExecutorConfig):
    """The mock stands in for any backend in tests and demos, so it takes any other key."""

    model_config = ConfigDict(extra="allow")

    #: Seconds each job takes.
    delay_s: float = Field(0, ge=0, le=3600)
    #: What health checks report.
    healthy: bool = True
    #: Fail every launch with a connection error, whatever the command.
    fail_launch: bool = False


class MockExecutor:
    executor_type = "mock"
    config_model = MockConfig

    def __init__(self, host: ExecutorHost) -> None:
        self.host = host
        self.delay_s = float(host.executor_config.get("delay_s", 0))
        self._runs: dict[str, _Run] = {}
        self.launched = 0

    async def launch_job(self, job: ContainerJob, env: dict[str, str]) -> LaunchResult:
        words = shlex.split(job.command) or ["true"]
        if words[0] == "fail-launch":
            raise ExecutorConnectionError("mock: launch failed (as the command asked)")
        if self.host.executor_config.get("fail_launch"):
            raise ExecutorConnectionError(f"mock: host {self.host.name} is down (fail_launch)")
        run = _plan(words, self.delay_s)
        run.env = dict(env)
        execution_id = f"mock-{uuid.uuid4().hex[:12]}"
        self._runs[execution_id] = run
        self.launched += 1
        return LaunchResult(execution_id, {"mock": True})

    async def check_status(self, execution_id: str) -> ExecutionStatus:
        run = self._runs.get(execution_id)
        if run is None:
            return ExecutionStatus("not-found")
        if time.monotonic() < run.ends_at:
            return ExecutionStatus("running")
        return ExecutionStatus("exited", run.exit_code, run.reason)

    async def get_logs(self, execution_id: str) -> tuple[str, str]:
        run = self._runs.get(execution_id)
        return (run.stdout, "") if run else ("", "")

    async def harvest_job(self, job: ContainerJob) -> HarvestResult:
        execution_id = job.get_execution_identifier()
        run = self._runs.get(execution_id)
        if run is not None:
            await asyncio.sleep(max(0.0, run.ends_at - time.monotonic()))
        status = await self.check_status(execution_id)
        stdout, stderr = await self.get_logs(execution_id)
        return HarvestResult(
            status=final_status(status.exit_code, status.reason),
            exit_code=status.exit_code,
            stdout=stdout,
            stderr=stderr,
            finished_at=utcnow(),
            reason=status.reason,
        )

    async def cleanup(self, execution_id: str) -> bool:
        return self._runs.pop(execution_id, None) is not None

    async def get_health_status(self) -> dict[str, Any]:
        healthy = bool(self.host.executor_config.get("healthy", True))
        return {
            "healthy": healthy,
            "error": None if healthy else "mock: unhealthy",
            "response_time": 0.0,
        }

    async def get_capabilities(self) -> dict[str, Any]:
        return {
            "supports_resource_limits": True,
            "supports_networking": False,
            "supports_persistent_storage": False,
            "supports_secrets": False,
            "supports_gpu": False,
            "supports_scaling": True,
        }

    async def aclose(self) -> None:
        self._runs.clear()


def _plan(words: list[str], delay_s: float) -> _Run:
    ends_at = time.monotonic() + delay_s
    command, args = words[0], words[1:]
    if command == "exit" and args:
        return _Run(ends_at, int(args[0]), "")
    if command == "sleep" and args:
        return _Run(ends_at + float(args[0]), 0, "")
    if command == "echo":
        return _Run(ends_at, 0, " ".join(args) + "\n")
    if command == "oom":
        return _Run(ends_at, 137, "", "out of memory")
    return _Run(ends_at, 0, "")
