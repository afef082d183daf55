"""Builds the Schedulers of this service: `bulkjobs worker` (application operations plus the
bulk job and container job sources, the outbox, signal handlers; tests run it through a small
entry module), the server's embedded worker, and `process_container_jobs`."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from src.services.bulk_job_manager import BulkJobManager
from src.services.domain.work import WorkItem
from src.services.job_types import job_types
from src.services.job_types.registry import JobTypeRegistry
from src.services.store.base import WorkStore
from src.services.worker.outbox import Outbox, outbox_depth
from src.services.worker.registry import OperationRegistry, operations
from src.services.worker.scheduler import Scheduler, SchedulerStats
from src.services.worker.sources import (
    BULK_JOB,
    CONTAINER_JOB,
    HOST_HEALTH,
    RETENTION,
    WEBHOOK_DELIVERY,
    BulkJobSource,
    ContainerJobSource,
    HostHealthSource,
    RetentionSource,
    WebhookSource,
)

log = logging.getLogger(__name__)

#: Host probes one embedded or container worker runs at once (each is one cheap call).
PROBE_CONCURRENCY = 2
#: Wraps the store a scheduler talks to (tests inject faults with it).
StoreWrapper = Callable[[WorkStore], WorkStore]


@dataclass(frozen=True)
class WorkerOptions:
    #: Stable across restarts: names the outbox and prefixes the lease owner.
    name: str
    #: What to claim; None: every registered operation, bulk_job, container_job and (not in
    #: burst mode) retention.
    operations: list[str] | None = None
    concurrency: int = 4
    batch_size: int = 100
    burst: bool = False
    lease_s: float = 30.0
    poll_interval_s: float = 0.5
    grace_s: float = 30.0
    #: Default: <directory of BULKJOBS_DB_PATH>/outbox/<name>.jsonl
    outbox: Path | None = None


def default_name() -> str:
    return socket.gethostname()


def owner_prefix(name: str) -> str:
    return f"{name}/"


def outbox_path(manager: BulkJobManager, name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return manager.settings.bulkjobs_db_path.parent / "outbox" / f"{safe}.jsonl"


def worker_id(name: str) -> str:
    """A lease owner unique across processes: the stable name, then pid and a random tag."""
    return f"{owner_prefix(name)}{os.getpid()}-{secrets.token_hex(3)}"


async def build_registry(
    manager: BulkJobManager, registry: JobTypeRegistry | None = None, retention: bool = False
) -> OperationRegistry:
    """The application's operations plus the built-in sources: bulk jobs of the registered
    job types, container jobs, webhook deliveries, host health probes and, with `retention`,
    the periodic retention sweep."""
    built = operations.copy()
    port, executors = await manager.job_port(), await manager.executors()
    built.add_source(BulkJobSource(port, registry or job_types, manager.settings))
    built.add_source(ContainerJobSource(port.store, executors, manager.settings))
    built.add_source(WebhookSource(port.store, manager.settings))
    built.add_source(HostHealthSource(port.store, executors, manager.settings))
    if retention:
        interval = manager.settings.bulkjobs_cleanup_interval_s
        built.add_source(RetentionSource(manager.delete_expired_jobs, interval))
    built.add_source(HostHealthSource(port.store, executors, manager.settings))
    return built


async def embedded_worker(manager: BulkJobManager, registry: JobTypeRegistry) -> Scheduler:
    """The server's in-process worker: bulk jobs, container jobs, webhook deliveries
    and host probes (not work items), each kind within its own concurrency setting, and
    the retention sweep. Stopped, it hands running work back at once."""
    settings = manager.settings
    limits = {
        BULK_JOB: settings.bulkjobs_worker_concurrency,
        CONTAINER_JOB: settings.bulkjobs_container_concurrency,
        RETENTION: 1,
        WEBHOOK_DELIVERY: settings.bulkjobs_webhook_concurrency,
        HOST_HEALTH: PROBE_CONCURRENCY,
    }
    return Scheduler(
        worker_id=worker_id(f"{default_name()}-server"),
        operations=list(limits),
        claim_batch_size=sum(limits.values()),
        max_concurrency=max(limits.values()),
        store=await manager.store(),
        registry=await build_registry(manager, registry, retention=True),
        lease_s=settings.bulkjobs_lease_seconds,
        poll_interval_s=min(0.5, settings.bulkjobs_container_poll_s),
        grace_s=0,
        kind_limits=limits,
    )


async def container_worker(
    manager: BulkJobManager, concurrency: int, poll_interval_s: float
) -> tuple[Scheduler, ContainerJobSource]:
    """`process_container_jobs`: a Scheduler of container jobs and host probes (and the
    container source, whose processor keeps the figures)."""
    settings = manager.settings
    store, executors = await manager.store(), await manager.executors()
    source = ContainerJobSource(store, executors, settings, poll_interval_s=poll_interval_s)
    registry = OperationRegistry()
    registry.add_source(source)
    registry.add_source(HostHealthSource(store, executors, settings))
    scheduler = Scheduler(
        worker_id=worker_id(f"{default_name()}-containers"),
        operations=[CONTAINER_JOB, HOST_HEALTH],
        claim_batch_size=concurrency + PROBE_CONCURRENCY,
        max_concurrency=concurrency,
        store=store,
        registry=registry,
        lease_s=settings.bulkjobs_lease_seconds,
        poll_interval_s=poll_interval_s,
        grace_s=0,
        kind_limits={CONTAINER_JOB: concurrency, HOST_HEALTH: PROBE_CONCURRENCY},
    )
    return scheduler, source


async def run_worker(
    manager: BulkJobManager, options: WorkerOptions, wrap: StoreWrapper | None = None
) -> SchedulerStats:
    """Run until SIGTERM/SIGINT (or, with burst, until idle); returns the counts."""
    store = await manager.store()
    outbox = Outbox(options.outbox or outbox_path(manager, options.name))
    await outbox.open()
    # A burst worker drains a queue and exits; sweeping is for the long-running ones.
    registry = await build_registry(manager, retention=not options.burst)
    unknown = set(options.operations or []) - set(registry.names())
    if unknown:
        log.warning("no handler for %s here: such items will be reported failed", sorted(unknown))
    scheduler = Scheduler(
        worker_id=worker_id(options.name),
        operations=options.operations,
        claim_batch_size=options.batch_size,
        max_concurrency=options.concurrency,
        store=wrap(store) if wrap else store,
        registry=registry,
        outbox=outbox,
        lease_s=options.lease_s,
        poll_interval_s=options.poll_interval_s,
        grace_s=options.grace_s,
    )
    log.info("worker %s running %s", scheduler.worker_id, options.operations or registry.names())
    try:
        return await run_until_signal(scheduler, options.burst)
    finally:
        await outbox.aclose()
        await manager.close_executors()


async def run_until_signal(scheduler: Scheduler, burst: bool = False) -> SchedulerStats:
    """Run until SIGTERM or SIGINT (or, with burst, until idle). A signal stops claiming; the
    scheduler lets running work finish within its grace period, then hands the rest back."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, scheduler.request_stop)
    try:
        return await scheduler.run(burst=burst)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


@dataclass(frozen=True)
class WorkerStatus:
    name: str
    outbox: Path
    depth: int
    corrupt: int
    leases: list[WorkItem]
    counts: dict[str, int]
    now: float


async def worker_status(
    manager: BulkJobManager, name: str | None = None, path: Path | None = None
) -> WorkerStatus:
    """The outbox depth and held leases of the worker called `name` (all its processes)."""
    name = name or default_name()
    path = path or outbox_path(manager, name)
    depth, corrupt = await asyncio.to_thread(outbox_depth, path)
    store = await manager.store()
    leases = await store.work_list_leases(owner_prefix(name))
    counts = await store.work_count_by_status()
    return WorkerStatus(name, path, depth, corrupt, leases, counts, time.time())
