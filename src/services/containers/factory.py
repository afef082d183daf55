"""ExecutorFactory: one executor per host, built from the host's type and config.

Executors for cloud backends import their SDKs only when first used, so a service that runs
local jobs needs none of them; a missing SDK is a clear error naming the extra to install.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

from src.services.containers.executors.base import ContainerExecutor
from src.services.containers.executors.errors import ExecutorConfigurationError
from src.services.domain.containers import ContainerJob, ExecutorHost
from src.services.errors import NotFound
from src.services.store.base import ContainerStore

log = logging.getLogger(__name__)

#: executor_type -> (module, class). Imported lazily.
EXECUTOR_CLASSES = {
    "local": ("src.services.containers.executors.local", "LocalExecutor"),
    "docker": ("src.services.containers.executors.docker", "DockerExecutor"),
    "cloudrun": ("src.services.containers.executors.cloudrun", "CloudRunExecutor"),
    "fargate": ("src.services.containers.executors.fargate", "FargateExecutor"),
    "scaleway": ("src.services.containers.executors.scaleway", "ScalewayExecutor"),
    "mock": ("src.services.containers.executors.mock", "MockExecutor"),
}


def executor_class(executor_type: str) -> Any:
    if executor_type not in EXECUTOR_CLASSES:
        raise ExecutorConfigurationError(f"unknown executor type {executor_type!r}")
    module_name, class_name = EXECUTOR_CLASSES[executor_type]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ExecutorConfigurationError(
            f"the {executor_type} executor needs {exc.name!r}: pip install 'bulkjobs[containers]'"
        ) from None
    return getattr(module, class_name)


class ExecutorFactory:
    """Executors by host. A host whose config changed gets a fresh executor."""

    def __init__(self, store: ContainerStore, local_work_dir: Path | None = None) -> None:
        self.store = store
        self.local_work_dir = local_work_dir
        self._executors: dict[str, tuple[ExecutorHost, ContainerExecutor]] = {}

    async def get_executor(self, job_or_host: ContainerJob | ExecutorHost) -> ContainerExecutor:
        if isinstance(job_or_host, ExecutorHost):
            return await self.executor_for_host(job_or_host)
        return await self.executor_for_host(await self.host_of(job_or_host))

    async def host_of(self, job: ContainerJob) -> ExecutorHost:
        if job.host_id is None:
            raise NotFound(f"container job {job.id} has no host")
        host = await self.store.host_get(job.host_id)
        if host is None:
            raise NotFound(f"executor host {job.host_id} of job {job.id} not found")
        return host

    async def executor_for_host(self, host: ExecutorHost) -> ContainerExecutor:
        cached = self._executors.get(host.id)
        if cached is not None and _same_setup(cached[0], host):
            return cached[1]
        if cached is not None:
            await cached[1].aclose()
        cls = executor_class(host.executor_type)
        executor: ContainerExecutor = (
            cls(host, self.local_work_dir) if host.executor_type == "local" else cls(host)
        )
        self._executors[host.id] = (host, executor)
        return executor

    async def aclose(self) -> None:
        executors, self._executors = list(self._executors.values()), {}
        for _, executor in executors:
            await executor.aclose()


async def stop_container(
    executors: ExecutorFactory, job: ContainerJob, executor: ContainerExecutor | None = None
) -> bool:
    """Stop and remove a job's container (with its host's executor, when the caller has it);
    failures are logged, not raised."""
    try:
        executor = executor or await executors.get_executor(job)
        return await executor.cleanup(job.get_execution_identifier())
    except Exception:
        log.warning("could not stop the container of job %s", job.id, exc_info=True)
        return False


def _same_setup(old: ExecutorHost, new: ExecutorHost) -> bool:
    keys = ("executor_type", "connection_string", "tls_enabled", "tls_verify", "executor_config")
    return all(getattr(old, key) == getattr(new, key) for key in keys)
