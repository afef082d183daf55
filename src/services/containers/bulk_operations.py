"""ContainerBulkOperations: create, move, change, delete and inspect many container jobs.

Every operation works through the ContainerStore protocol, so it behaves the same on the
embedded store and on Convex. Writes go in chunks of at most WRITE_CHUNK jobs, each one store
transaction (one Convex mutation, which caps batches at 500): a failing chunk rolls back only
itself. Per-id operations read the jobs once, pre-check them, write the rest and let the store
check each change again inside its transaction, so a concurrent change is never overwritten
with an illegal one. Their errors map job id -> reason; `owner` limits them to one user's
jobs (another user's job is reported "not found", as if it did not exist).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

import psutil  # type: ignore[import-untyped]  # no types-psutil in the dev extras

from src.services.containers.routing import why_not
from src.services.containers.service import ContainerJobService
from src.services.domain import new_id, utcnow
from src.services.domain.containers import (
    ACTIVE_STATUSES,
    LOCAL_EXECUTORS,
    TERMINAL_STATUSES,
    TRANSITIONS,
    ContainerJob,
    ContainerJobStatus,
    ContainerQuota,
    EnvironmentVariableTemplate,
    ExecutorHost,
    is_private_image,
    isolation_refusal,
)
from src.services.errors import (
    BulkJobError,
    ContainerQuotaExceeded,
    InvalidInput,
    NotFound,
    PermissionDenied,
)
from src.services.store.base import ContainerStore

log = logging.getLogger(__name__)

S = ContainerJobStatus
MAX_BULK_CREATION_LIMIT = 10_000
#: Jobs per store write: Convex's batch cap, and a short write lock on SQLite.
WRITE_CHUNK = 500
#: Containers stopped at once after a bulk cancel or forced delete.
STOP_CONCURRENCY = 16
#: Statuses a job may be moved to another host in: it has not started.
#: Ids not found as given that are tried as the start of an id, per call.
PREFIX_LOOKUPS = 100
MOVABLE = frozenset({S.PENDING, S.QUEUED, S.RETRYING})
#: Fields a restarted job keeps; everything about the old run is left behind.
RESTART_KEEPS = frozenset(
    {
        "host_id",
        "name",
        "description",
        "docker_image",
        "command",
        "working_directory",
        "memory_limit",
        "cpu_limit",
        "timeout_seconds",
        "environment_template_id",
        "override_environment",
        "network_configuration",
        "created_by",
        "executor_type",
        "preferred_executor",
        "routing_reason",
        "estimated_cost",
        "priority",
        "max_retries",
        "bulk_job_id",
        "item_key",
        "untrusted",
        "host_pinned",
    }
)

Errors = dict[str, str]


def chunks(items: list[Any], size: int = WRITE_CHUNK) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ContainerBulkOperations:
    """Bulk operations over a ContainerJobService's store (and its executors, to stop
    containers)."""

    def __init__(self, service: ContainerJobService) -> None:
        self.service = service

    async def store(self) -> ContainerStore:
        return await self.service.store()

    async def create_jobs_bulk(
        self,
        docker_image: str,
        count: int,
        user: str | None,
        host: str | ExecutorHost | None,
        command: str = "",
        batch_size: int = 100,
        *,
        trusted: bool = True,
        limited: bool = True,
        **fields: Any,
    ) -> tuple[list[ContainerJob], list[str]]:
        """`count` identical pending jobs on `host` (an id, name or ExecutorHost; None lets
        routing pick one host for all), written `batch_size` (at most 500) per transaction.

        ValueError when count exceeds MAX_BULK_CREATION_LIMIT. Invalid parameters return no
        jobs and the problem; a failed batch is rolled back alone and reported, the jobs of
        the other batches are returned. `fields` are ContainerJobSpec fields.

        `limited` (unless False: admins over HTTP): `user`'s unfinished jobs plus these stay
        within BULKJOBS_USER_MAX_UNFINISHED_CONTAINER_JOBS, else ContainerQuotaExceeded and
        nothing is written. The first batch reserves room for the rest, so a concurrent
        creation cannot take it midway.
        """
        if count > MAX_BULK_CREATION_LIMIT:
            raise ValueError(f"count {count} exceeds maximum of {MAX_BULK_CREATION_LIMIT} jobs")
        problem = _check_counts(count, batch_size)
        if problem:
            return [], [problem]
        spec = {"docker_image": docker_image, "command": command, **fields}
        try:
            (model,) = await self.service.prepare_jobs(
                [spec], user=user, host=host, trusted=trusted
            )
        except (InvalidInput, PermissionDenied) as exc:
            return [], [str(exc)]
        size = min(batch_size, WRITE_CHUNK)
        quota = self.service.quota(limited)
        return await self._write_batches(model, _ids(count), size, quota)

    async def _write_batches(
        self, model: ContainerJob, ids: list[str], size: int, quota: ContainerQuota | None
    ) -> tuple[list[ContainerJob], list[str]]:
        """Write copies of `model` under `ids`, `size` per transaction (the document sent
        once per batch). The jobs returned are built while the store writes them. Under a
        quota the first batch is written alone: it reserves room for the others, or raises
        ContainerQuotaExceeded before anything is written."""
        store = await self.store()
        created: list[ContainerJob] = []
        errors: list[str] = []
        batches = list(chunks(ids, size))
        quotas = _batch_quotas(quota, [len(batch) for batch in batches])
        now = utcnow()
        pending: tuple[int, list[ContainerJob], asyncio.Task[None]] | None = None
        template = _copy_of(model, model.id, now)
        for number, (batch_ids, batch_quota) in enumerate(zip(batches, quotas, strict=True), 1):
            write = asyncio.create_task(
                store.container_create_copies(template, batch_ids, batch_quota)
            )
            batch = [_copy_of(model, job_id, now) for job_id in batch_ids]
            if pending is not None:
                await _settle(pending, len(batches), created, errors)
            pending = (number, batch, write)
            if number == 1 and quota is not None:
                await _settle(pending, len(batches), created, errors, refuse=True)
                pending = None
        if pending is not None:
            await _settle(pending, len(batches), created, errors)
        return created, errors

    async def migrate_jobs_to_host(
        self,
        job_ids: list[str],
        target_host: str | ExecutorHost,
        *,
        owner: str | None = None,
        trusted: bool = True,
    ) -> tuple[int, Errors]:
        """Move jobs that have not started (pending, queued, retrying) to `target_host`.

        An inactive or unhealthy target moves nothing; a job the target cannot run (a
        non-admin's job on a host without isolation, a private localhost image on a cloud
        executor, another `preferred_executor`, limits above the host's) stays where it is,
        with the reason. An untrusted caller may not name such a host at all
        (PermissionDenied). Jobs that have not started hold no host slot, so host job counts
        do not change. The store checks the isolation rule again as it writes.
        """
        ids = _unique(job_ids)
        target = await self._fresh_host(target_host)
        refusal = None if trusted else isolation_refusal(target, untrusted=True)
        if refusal is not None:
            raise PermissionDenied(refusal)
        problem = _unavailable(target)
        if problem:
            return 0, dict.fromkeys(ids, f"target host {target.name} is unavailable: {problem}")
        jobs, errors = await self._read(ids, owner)
        templates = await self._templates(jobs.values())
        movable = []
        for job in jobs.values():
            reason = _cannot_move(job, target, templates.get(job.environment_template_id or ""))
            if reason:
                errors[job.id] = reason
            else:
                movable.append(job.id)
        moved = await self._write_chunks(
            movable, errors, lambda chunk: self._migrate(chunk, target)
        )
        return len(moved), errors

    async def _migrate(self, ids: list[str], target: ExecutorHost) -> tuple[list[str], Errors]:
        store = await self.store()
        return await store.container_migrate(ids, target.id, target.executor_type)

    async def _fresh_host(self, host: str | ExecutorHost) -> ExecutorHost:
        """The host as stored now (a passed-in ExecutorHost may be stale)."""
        key = host.id if isinstance(host, ExecutorHost) else host
        found = await self.service.find_host(key)
        if found is None:
            raise InvalidInput("target_host", f"no executor host {key!r}")
        return found

    async def _templates(
        self, jobs: Iterable[ContainerJob]
    ) -> dict[str, EnvironmentVariableTemplate]:
        store = await self.store()
        wanted = {job.environment_template_id for job in jobs if job.environment_template_id}
        found = {}
        for template_id in wanted:
            template = await store.template_get(template_id)
            if template is not None:
                found[template_id] = template
        return found

    async def bulk_update_job_status(
        self,
        job_ids: list[str],
        new_status: ContainerJobStatus | str,
        reason: str | None = None,
        *,
        owner: str | None = None,
    ) -> tuple[int, Errors]:
        """Move each job to `new_status` where the status table allows it; `reason` goes
        into `status_message`. Containers of jobs that leave launching/running for a final
        status are stopped.

        Store round trips: one read and one write per WRITE_CHUNK (500) ids -- two for up
        to 500 ids, whatever the store (Convex caps a mutation at 500 jobs; SQLite keeps its
        write lock short). Stopping containers adds a host lookup per running job.
        """
        return await self._transition(job_ids, _status(new_status), reason, owner)

    async def bulk_cancel_jobs(
        self, job_ids: list[str], reason: str | None = None, *, owner: str | None = None
    ) -> tuple[int, Errors]:
        """Cancel unfinished jobs, stopping the containers of running ones."""
        message = reason or "cancelled in bulk"
        return await self._transition(job_ids, S.CANCELLED, message, owner)

    async def bulk_stop_jobs(
        self, job_ids: list[str], reason: str | None = None, *, owner: str | None = None
    ) -> tuple[int, Errors]:
        """Stop jobs whose container exists (launching or running): cancelled, container
        stopped. Jobs that have not started are reported ("use cancel"), not touched."""
        message = reason or "stopped in bulk"
        return await self._transition(job_ids, S.CANCELLED, message, owner, ACTIVE_STATUSES)

    async def bulk_start_jobs(
        self, job_ids: list[str], *, owner: str | None = None
    ) -> tuple[int, Errors]:
        """Which jobs will start: pending ones. No write is needed, or made: every processor
        claims pending jobs on its next poll, and a job is moved to queued only by the
        processor that claimed it (a queued job without a lease would never be claimed).
        Others are reported: already started, finished (use restart), or missing. One read.
        """
        jobs, errors = await self._read(_unique(job_ids), owner)
        started = 0
        for job in jobs.values():
            if job.status == S.PENDING:
                started += 1
            elif job.status in TERMINAL_STATUSES:
                errors[job.id] = f"job is {job.status.value}; restart it instead"
            else:
                errors[job.id] = f"job has already started ({job.status.value})"
        return started, errors

    async def bulk_restart_jobs(
        self, job_ids: list[str], *, owner: str | None = None, limited: bool = True
    ) -> tuple[dict[str, str], Errors]:
        """Run finished jobs (completed, failed, timeout, cancelled) again as fresh pending
        copies on the same host: same spec and owner, new id, no trace of the old run. The
        old jobs stay as they were (a final status never changes). Unfinished jobs are
        reported: they still run (a retrying job's processor retries it itself). Returns
        ({old id: new id}, errors); one read, one host list, one write per 500 copies.
        `limited`: copies count against their owners' quota of unfinished jobs (a batch
        over it is reported, not written).
        """
        jobs, errors = await self._read(_unique(job_ids), owner)
        hosts = {host.id: host for host in await (await self.store()).host_list()}
        copies: dict[str, ContainerJob] = {}
        for job in jobs.values():
            reason = _cannot_restart(job, hosts.get(job.host_id or ""))
            if reason:
                errors[job.id] = reason
            else:
                copies[job.id] = _fresh_copy(job)
        await self._create_copies(copies, errors, limited)
        return {old: copy.id for old, copy in copies.items() if old not in errors}, errors

    async def _create_copies(
        self, copies: dict[str, ContainerJob], errors: Errors, limited: bool
    ) -> None:
        store = await self.store()
        quota = self.service.quota(limited)
        for chunk in chunks(list(copies.items())):
            try:
                await store.container_create_batch([copy for _, copy in chunk], quota)
            except BulkJobError as exc:
                errors.update((old, f"not restarted: {exc}") for old, _ in chunk)

    async def _transition(
        self,
        job_ids: list[str],
        status: ContainerJobStatus,
        reason: str | None,
        owner: str | None,
        only_from: frozenset[ContainerJobStatus] | None = None,
    ) -> tuple[int, Errors]:
        jobs, errors = await self._read(_unique(job_ids), owner)
        legal = []
        for job in jobs.values():
            problem = _cannot_transition(job, status, only_from)
            if problem:
                errors[job.id] = problem
            else:
                legal.append(job.id)
        fields = {"status_message": reason} if reason else None
        updated: list[ContainerJob] = []

        async def write(chunk: list[str]) -> tuple[list[str], Errors]:
            done, failed = await (await self.store()).container_transition_many(
                chunk, status, fields
            )
            updated.extend(done)
            return [job.id for job in done], failed

        await self._write_chunks(legal, errors, write)
        await self._stop_containers(updated)
        return len(updated), errors

    async def _stop_containers(self, jobs: list[ContainerJob]) -> None:
        """Stop the containers of jobs that ended here and had launched one. The job as
        written is used, not as read: it may have launched since the read."""
        with_container = [
            job for job in jobs if job.is_terminal_status and job.get_execution_identifier()
        ]
        gate = asyncio.Semaphore(STOP_CONCURRENCY)

        async def stop(job: ContainerJob) -> None:
            async with gate:
                await self.service.stop_container(job)

        await asyncio.gather(*(stop(job) for job in with_container))

    async def bulk_delete_jobs(
        self, job_ids: list[str], force: bool = False, *, owner: str | None = None
    ) -> tuple[int, Errors]:
        """Delete finished jobs. Unfinished ones are refused unless `force`, which first
        cancels them (their processors see it and let go) and stops their containers."""
        jobs, errors = await self._read(_unique(job_ids), owner)
        unfinished = [job for job in jobs.values() if not job.is_terminal_status]
        if not force:
            for job in unfinished:
                errors[job.id] = f"job is {job.status.value}; cancel it first or force"
        elif unfinished:
            await self._transition([job.id for job in unfinished], S.CANCELLED, "deleted", owner)
        deletable = [job_id for job_id in jobs if job_id not in errors]
        removed = await self._write_chunks(deletable, errors, self._remove)
        return len(removed), errors

    async def _remove(self, ids: list[str]) -> tuple[list[str], Errors]:
        removed = await (await self.store()).container_remove(ids, force=True)
        gone = set(removed)
        return removed, {job_id: "not found" for job_id in ids if job_id not in gone}

    async def bulk_cleanup_old_jobs(self, days_old: float, batch_size: int = WRITE_CHUNK) -> int:
        """Delete finished jobs created more than `days_old` days ago, `batch_size` (at most
        500) per transaction until none is left; unfinished jobs are never touched."""
        if days_old < 0:
            raise InvalidInput("days_old", "must be 0 or more")
        size = max(1, min(batch_size, WRITE_CHUNK))
        cutoff = utcnow() - timedelta(days=days_old)
        store = await self.store()
        total = 0
        while True:
            removed = await store.container_remove_finished_before(cutoff, size)
            total += removed
            if removed < size:
                return total

    async def get_bulk_status(
        self, job_ids: list[str], *, owner: str | None = None
    ) -> dict[str, Any]:
        """Status of each job, counts by status and the share that has finished."""
        ids = _unique(job_ids)
        jobs, errors = await self._read(ids, owner)
        by_status: dict[str, int] = {}
        for job in jobs.values():
            by_status[job.status.value] = by_status.get(job.status.value, 0) + 1
        finished = sum(1 for job in jobs.values() if job.is_terminal_status)
        return {
            "total": len(ids),
            "found": len(jobs),
            "finished": finished,
            "progress": finished / len(jobs) if jobs else 0.0,
            "by_status": by_status,
            "jobs": {job_id: job.status.value for job_id, job in jobs.items()},
            "errors": errors,
        }

    async def get_bulk_operation_metrics(self) -> dict[str, Any]:
        """Memory and CPU use of this machine and process, job counts by status (on Convex
        each count stops at 1,000) and each host's utilization."""
        store = await self.store()
        counts = await store.container_count_by_status()
        hosts = await store.host_list()
        memory = psutil.virtual_memory()
        process = psutil.Process()
        return {
            "memory_usage": memory.percent,
            "memory_available_mb": round(memory.available / 2**20, 1),
            "process_memory_mb": round(process.memory_info().rss / 2**20, 1),
            "cpu_usage": await asyncio.to_thread(psutil.cpu_percent, 0.1),
            "jobs_by_status": counts,
            "total_jobs": sum(counts.values()),
            "hosts": [_utilization(host) for host in hosts],
        }

    async def _read(
        self, ids: list[str], owner: str | None
    ) -> tuple[dict[str, ContainerJob], Errors]:
        """The jobs by id (one store read), and "not found" for the missing or not owned. A
        missing id may be a unique start of an id (as listings show them shortened): up to
        PREFIX_LOOKUPS of them are looked up that way, one read each."""
        store = await self.store()
        found = {job.id: job for job in await store.container_get_many(ids)}
        if owner is not None:
            found = {job_id: job for job_id, job in found.items() if job.created_by == owner}
        missing = [job_id for job_id in ids if job_id not in found]
        errors: Errors = {job_id: "not found" for job_id in missing[PREFIX_LOOKUPS:]}
        for given in missing[:PREFIX_LOOKUPS]:
            try:
                job = await self.service.get_by_prefix(given, owner)
            except (NotFound, InvalidInput) as exc:
                errors[given] = "not found" if isinstance(exc, NotFound) else str(exc)
            else:
                found[job.id] = job
        return found, errors

    async def _write_chunks(
        self,
        ids: list[str],
        errors: Errors,
        write: Callable[[list[str]], Awaitable[tuple[list[str], Errors]]],
    ) -> list[str]:
        """Run `write` over chunks of ids; a failing chunk is reported per id, not raised."""
        done: list[str] = []
        for chunk in chunks(ids):
            try:
                ok, failed = await write(chunk)
            except BulkJobError as exc:
                log.warning("bulk write of %d jobs failed: %s", len(chunk), exc)
                errors.update(dict.fromkeys(chunk, f"not changed: store error: {exc}"))
                continue
            done.extend(ok)
            errors.update(failed)
        return done


def _unique(job_ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(job_ids))


def _status(value: ContainerJobStatus | str) -> ContainerJobStatus:
    try:
        return ContainerJobStatus(value)
    except ValueError:
        raise InvalidInput("new_status", f"unknown status {value!r}") from None


def _check_counts(count: int, batch_size: int) -> str | None:
    if count < 1:
        return f"count: must be at least 1, not {count}"
    if batch_size < 1:
        return f"batch_size: must be at least 1, not {batch_size}"
    return None


async def _settle(
    pending: tuple[int, list[ContainerJob], asyncio.Task[None]],
    total: int,
    created: list[ContainerJob],
    errors: list[str],
    refuse: bool = False,
) -> None:
    """Wait for a batch write; a failure is reported, or with `refuse` a quota refusal is
    raised (nothing of the creation was written)."""
    number, batch, write = pending
    try:
        await write
    except ContainerQuotaExceeded:
        if refuse:
            raise
        log.warning("bulk create: batch %d of %d over quota", number, total, exc_info=True)
        errors.append(f"batch {number} of {total} ({len(batch)} jobs) was not written: over quota")
        return
    except BulkJobError as exc:
        log.warning("bulk create: batch %d of %d failed: %s", number, total, exc)
        errors.append(
            f"batch {number} of {total} ({len(batch)} jobs) was not written: database error: {exc}"
        )
        return
    created.extend(batch)


def _batch_quotas(quota: ContainerQuota | None, sizes: list[int]) -> list[ContainerQuota | None]:
    """The quota of each batch of one creation: the first reserves room for the rest under
    one hold id, the others draw on it."""
    if quota is None or not sizes:
        return [None] * len(sizes)
    hold_id = uuid.uuid4().hex
    first = quota.model_copy(update={"hold_id": hold_id, "hold": sum(sizes[1:])})
    rest = quota.model_copy(update={"hold_id": hold_id, "hold": 0})
    return [first, *[rest] * (len(sizes) - 1)]


def _ids(count: int) -> list[str]:
    """`count` unique ids: one random 96-bit prefix per call and a counter (drawing a uuid4
    per job costs as much as a quarter of writing it)."""
    prefix = secrets.token_hex(12)
    return [f"{prefix}{number:08x}" for number in range(count)]


def _copy_of(model: ContainerJob, job_id: str, now: datetime) -> ContainerJob:
    """A validated job under a new id; its mutable fields are its own (a deep copy would
    cost more than writing the job)."""
    update = {
        "id": job_id,
        "created_at": now,
        "updated_at": now,
        "network_configuration": [dict(net) for net in model.network_configuration],
        "executor_metadata": dict(model.executor_metadata),
    }
    return model.model_copy(update=update)


def _unavailable(host: ExecutorHost) -> str | None:
    if not host.is_active:
        return "inactive"
    if not host.is_healthy():
        return f"unhealthy ({host.health_check_failures} failed health checks)"
    return None


def _cannot_move(
    job: ContainerJob, target: ExecutorHost, template: EnvironmentVariableTemplate | None
) -> str | None:
    if job.status not in MOVABLE:
        return f"cannot move a {job.status.value} job: it has started"
    refusal = isolation_refusal(target, job.untrusted)
    if refusal is not None:
        return refusal
    kind = target.executor_type
    if job.preferred_executor and job.preferred_executor != kind:
        return f"job wants the {job.preferred_executor} executor, not {kind}"
    if kind not in LOCAL_EXECUTORS and is_private_image(job.docker_image):
        return f"{kind} cannot pull {job.docker_image}: it is in a registry on this machine"
    # Jobs that have not started need no free slot, so a full host still takes them.
    problem = why_not(job, target.model_copy(update={"current_job_count": 0}), template)
    return f"host {target.name} cannot run this job: {problem}" if problem else None


def _cannot_transition(
    job: ContainerJob,
    status: ContainerJobStatus,
    only_from: frozenset[ContainerJobStatus] | None,
) -> str | None:
    if only_from is not None and job.status not in only_from:
        return f"job is {job.status.value}, not launching or running"
    if job.status == status:
        return f"job is already {status.value}"
    if status not in TRANSITIONS[job.status]:
        return f"a container job cannot go from {job.status.value} to {status.value}"
    return None


def _cannot_restart(job: ContainerJob, host: ExecutorHost | None) -> str | None:
    if not job.is_terminal_status:
        return f"job is {job.status.value}; only finished jobs can be restarted"
    if host is None:
        return f"its host {job.host_id} no longer exists"
    problem = isolation_refusal(host, job.untrusted)
    if problem is not None:
        return problem
    problem = _unavailable(host)
    return f"its host {host.name} is unavailable: {problem}" if problem else None


def _fresh_copy(job: ContainerJob) -> ContainerJob:
    values = job.model_dump(include=set(RESTART_KEEPS))
    return ContainerJob.model_validate(
        values | {"id": new_id(), "status_message": f"restart of {job.id}"}
    )


def _utilization(host: ExecutorHost) -> dict[str, Any]:
    return {
        "id": host.id,
        "name": host.name,
        "executor_type": host.executor_type,
        "is_active": host.is_active,
        "healthy": host.is_healthy(),
        **host.get_capacity_info(),
    }
