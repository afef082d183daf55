"""Host health: probe a host's executor and record the result on the host, and count a launch
that failed for the host's sake against it. After `threshold` failures in a row the store
marks the host unhealthy, and routing and failover skip it until a probe succeeds.

Workers probe on an interval through the Scheduler's HostHealthSource
(src/services/worker/sources.py); `POST /hosts/{id}/health-check` probes one host now.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from src.services.containers.executors.base import scrub, secret_values
from src.services.containers.executors.errors import (
    ExecutorConfigurationError,
    ExecutorError,
)
from src.services.containers.factory import ExecutorFactory
from src.services.domain.containers import ExecutorHost
from src.services.errors import BulkJobError
from src.services.store.base import ContainerStore

log = logging.getLogger(__name__)

#: Longest a probe may take; a backend that does not answer by then is unhealthy.
PROBE_TIMEOUT_S = 10.0
#: Longest error kept on the host.
MAX_ERROR_CHARS = 1000


async def probe_host(
    store: ContainerStore, executors: ExecutorFactory, host: ExecutorHost, threshold: int
) -> dict[str, Any]:
    """Ask the host's executor how it is (within PROBE_TIMEOUT_S) and record the answer;
    returns the executor's answer with the host's failure count and healthy flag."""
    try:
        executor = await executors.executor_for_host(host)
        health = await asyncio.wait_for(executor.get_health_status(), PROBE_TIMEOUT_S)
    except TimeoutError:
        health = {"healthy": False, "error": f"no answer within {PROBE_TIMEOUT_S:g} s"}
    except Exception as exc:  # a probe's failure is the host's state, not ours
        health = {"healthy": False, "error": f"{type(exc).__name__}: {exc}"}
    healthy = bool(health.get("healthy"))
    error = None if healthy else _error_text(host, str(health.get("error") or "unhealthy"))
    updated = await store.host_record_health(host.id, healthy, error, threshold)
    return health | {
        "error": error,
        "health_check_failures": updated.health_check_failures,
        "host_healthy": updated.healthy,
    }


def is_host_fault(exc: ExecutorError) -> bool:
    """Whether a launch failed because of the host (unreachable, overloaded, misconfigured)
    rather than the job (an image that does not exist, limits above the backend's)."""
    return exc.transient or isinstance(exc, ExecutorConfigurationError)


async def count_failed_launch(
    store: ContainerStore, host: ExecutorHost, exc: ExecutorError, threshold: int
) -> ExecutorHost | None:
    """Count a launch that failed for the host's sake against it; the host as recorded, or
    None when the store could not record it (the job's own handling goes on)."""
    error = _error_text(host, f"launch failed: {exc}")
    try:
        return await store.host_record_health(host.id, False, error, threshold, probe=False)
    except BulkJobError:
        log.warning("could not count a failed launch against host %s", host.name, exc_info=True)
        return None


def _error_text(host: ExecutorHost, text: str) -> str:
    """An error as kept on the host: no credentials of its config, bounded."""
    clean = scrub(text, secret_values(host.executor_config))
    return clean if len(clean) <= MAX_ERROR_CHARS else f"{clean[:MAX_ERROR_CHARS]}... [cut]"
