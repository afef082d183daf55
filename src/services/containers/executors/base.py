"""The ContainerExecutor protocol and the values executors return."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from src.services.containers.executors.errors import ExecutorError
from src.services.domain.containers import SECRET_KEYS, ContainerJob

State = Literal["running", "exited", "failed", "not-found"]
FinalStatus = Literal["completed", "failed", "timeout"]

#: Largest stdout/stderr kept per job; the rest is cut with a marker. Both logs live in the
#: job document, which Convex caps at 1 MiB.
MAX_LOG_BYTES = 256 * 1024


@dataclass(frozen=True)
class LaunchResult:
    execution_id: str
    #: Provider details worth keeping on the job (region, task ARN, container name...).
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecutionStatus:
    state: State
    exit_code: int | None = None
    #: Why it ended, when that is more than an exit code ("out of memory", "timeout").
    reason: str = ""


@dataclass(frozen=True)
class HarvestResult:
    status: FinalStatus
    exit_code: int | None
    stdout: str
    stderr: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: Peak memory in bytes, where the backend reports it.
    max_memory_usage: int | None = None
    reason: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


class ContainerExecutor(Protocol):
    """One backend that runs container jobs. Blocking SDK calls go to a thread."""

    executor_type: str

    async def launch_job(self, job: ContainerJob, env: dict[str, str]) -> LaunchResult: ...

    async def check_status(self, execution_id: str) -> ExecutionStatus: ...

    async def get_logs(self, execution_id: str) -> tuple[str, str]: ...

    async def harvest_job(self, job: ContainerJob) -> HarvestResult: ...

    async def cleanup(self, execution_id: str) -> bool: ...

    async def get_health_status(self) -> dict[str, Any]: ...

    async def get_capabilities(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


async def probe_health(check: Callable[[], Awaitable[str | None]]) -> dict[str, Any]:
    """get_health_status from one cheap backend call: `check` returns a problem or None (an
    ExecutorError it raises is the problem), timed."""
    started = time.perf_counter()
    try:
        error = await check()
    except ExecutorError as exc:
        error = str(exc)
    return {
        "healthy": error is None,
        "error": error,
        "response_time": time.perf_counter() - started,
    }


def cap_log(text: str) -> str:
    """At most MAX_LOG_BYTES of a log, keeping the end (where errors usually are)."""
    data = text.encode(errors="replace")
    if len(data) <= MAX_LOG_BYTES:
        return text
    tail = data[-MAX_LOG_BYTES:].decode(errors="replace")
    return f"[... {len(data) - MAX_LOG_BYTES} bytes cut ...]\n{tail}"


def final_status(exit_code: int | None, reason: str = "") -> FinalStatus:
    if reason == "timeout":
        return "timeout"
    return "completed" if exit_code == 0 else "failed"


def secret_values(config: Any) -> list[str]:
    """Every string under a secret-looking key of an executor config, longest first."""
    found: list[str] = []

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, secret or bool(SECRET_KEYS.search(str(key))))
        elif isinstance(value, list):
            for item in value:
                walk(item, secret)
        elif secret and isinstance(value, str) and len(value) >= 4:
            found.append(value)

    walk(config, False)
    return sorted(set(found), key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
