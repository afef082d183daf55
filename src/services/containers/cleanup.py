"""Housekeeping for container jobs: old jobs, orphaned containers, sample data.

An orphan is a container that carries our labels but whose job is gone or already finished
(a processor crashed between harvest and removal, or someone deleted the job). Executors
that can list their containers (`list_managed`) take part; the others have nothing to list.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from src.services.containers.bulk_operations import ContainerBulkOperations
from src.services.containers.service import ContainerJobService
from src.services.domain import utcnow
from src.services.domain.containers import ContainerJobStatus, ExecutorHost
from src.services.errors import Conflict

log = logging.getLogger(__name__)

#: Finished jobs deleted per store call, so one call stays a small transaction.
DELETE_BATCH = 500
CREATE_BATCH = 500
UNFINISHED = ("pending", "queued", "launching", "running", "retrying")


async def cleanup_containers(
    service: ContainerJobService, days: int, dry_run: bool = False, force: bool = False
) -> dict[str, Any]:
    """Delete finished jobs older than `days`, remove orphaned containers and, with
    `force`, cancel unfinished jobs older than `days` (stopping their containers)."""
    result: dict[str, Any] = {"jobs": 0, "orphans": 0, "stopped": 0, "errors": []}
    cutoff = utcnow() - timedelta(days=days)
    if force:
        result["stopped"] = await _stop_stale(service, cutoff, dry_run)
    result["jobs"] = await _delete_old(service, days, dry_run)
    store = await service.store()
    for host in await store.host_list(active_only=True):
        try:
            result["orphans"] += await _remove_orphans(service, host, dry_run)
        except Exception as exc:  # one unreachable host must not stop the others
            result["errors"].append(f"host {host.name}: {exc}")
    return result


async def _delete_old(service: ContainerJobService, days: int, dry_run: bool) -> int:
    if dry_run:
        store = await service.store()
        cutoff = utcnow() - timedelta(days=days)
        finished = [s for s in ContainerJobStatus if s.value not in UNFINISHED]
        total = 0
        for status in finished:
            jobs = await store.container_list(status=status.value, limit=1000)
            total += sum(1 for job in jobs if job.created_at < cutoff)
        return total
    return await ContainerBulkOperations(service).bulk_cleanup_old_jobs(days, DELETE_BATCH)


async def _stop_stale(service: ContainerJobService, cutoff: Any, dry_run: bool) -> int:
    store = await service.store()
    stopped = 0
    for status in UNFINISHED:
        for job in await store.container_list(status=status, limit=1000):
            if job.created_at >= cutoff:
                continue
            if dry_run:
                stopped += 1
                continue
            try:  # it may have ended since it was listed
                stopped += await service.cancel_job(
                    job.id, reason="stale: stopped by cleanup_containers"
                )
            except Conflict:
                continue
    return stopped


async def _remove_orphans(service: ContainerJobService, host: ExecutorHost, dry_run: bool) -> int:
    executor = await (await service.factory()).executor_for_host(host)
    list_managed = getattr(executor, "list_managed", None)
    if list_managed is None:
        return 0
    containers: list[dict[str, str]] = await list_managed()
    store = await service.store()
    known = await store.container_get_many([container["job_id"] for container in containers])
    jobs = {job.id: job for job in known}
    removed = 0
    for container in containers:
        job = jobs.get(container["job_id"])
        if job is not None and not job.is_terminal_status:
            continue  # still being run
        removed += 1
        if not dry_run:
            await executor.cleanup(container["execution_id"])
            log.info("removed orphaned container %s", container["execution_id"])
    return removed


SAMPLE_COMMANDS = {
    "mock": ["echo sample-ok", "exit 1", "sleep 2", "echo 42", "oom"],
    "local": ["echo sample-ok", "exit 1", "sleep 2", "echo '{\"value\": 42}'", "true"],
}


async def create_sample_jobs(
    service: ContainerJobService, count: int, executor_type: str, user: str
) -> list[str]:
    """`count` sample jobs (successes, a failure, a slow one, JSON output) on a host of the
    type; a mock host named `sample-mock` is created when the type is mock and none exists."""
    store = await service.store()
    hosts = [h for h in await store.host_list(active_only=True) if h.executor_type == executor_type]
    if not hosts and executor_type == "mock":
        await service.create_host(name="sample-mock", executor_type="mock", max_concurrent_jobs=8)
    commands = SAMPLE_COMMANDS.get(executor_type, SAMPLE_COMMANDS["local"])
    image = "local" if executor_type in ("local", "mock") else "bulkjobs-busybox:test"
    specs = [
        {
            "docker_image": image,
            "command": commands[index % len(commands)],
            "name": f"sample #{index + 1}",
            "timeout_seconds": 60,
        }
        for index in range(count)
    ]
    jobs = await service.prepare_jobs(specs, user=user, executor_type=executor_type)
    for start in range(0, len(jobs), CREATE_BATCH):
        await store.container_create_batch(jobs[start : start + CREATE_BATCH])
    return [job.id for job in jobs]
