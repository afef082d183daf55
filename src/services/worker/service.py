"""Builds and runs one worker process: the registry (application operations plus the bulk
job and container job sources), the outbox, the Scheduler and its signal handlers.
`bulkjobs worker` runs it; tests run it through a small entry module."""

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
from typing import cast

from src.services.bulk_job_manager import BulkJobManager
from src.services.containers.service import ContainerJobService
from src.services.job_types import job_types
from src.services.store.base import WorkStore
from src.services.worker.models import WorkItem
from src.services.worker.outbox import Outbox, outbox_depth
from src.services.worker.registry import OperationRegistry, operations
from src.services.worker.scheduler import Scheduler, SchedulerStats
from src.services.worker.sources import BulkJobSource, ContainerJobSource

log = logging.getLogger(__name__)

#: Wraps the store a scheduler talks to (tests inject faults with it).
StoreWrapper = Callable[[WorkStore], WorkStore]


@dataclass(frozen=True)
class WorkerOptions:
    #: Stable across restarts: names the outbox and prefixes the lease owner.
    name: str
    #: What to claim; None: every registered operation, bulk_job and container_job.
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


def build_registry(manager: BulkJobManager, service: ContainerJobService) -> OperationRegistry:
    registry = operations.copy()
    registry.add_source(BulkJobSource(manager, job_types))
    registry.add_source(ContainerJobSource(service))
    return registry


async def run_worker(
    manager: BulkJobManager, options: WorkerOptions, wrap: StoreWrapper | None = None
) -> SchedulerStats:
    """Run until SIGTERM/SIGINT (or, with burst, until idle); returns the counts."""
    service = ContainerJobService(manager)
    store = cast(WorkStore, await manager.store())
    outbox = Outbox(options.outbox or outbox_path(manager, options.name))
    await outbox.open()
    registry = build_registry(manager, service)
    unknown = set(options.operations or []) - set(registry.names())
    if unknown:
        log.warning("no handler for %s here: such items will be reported failed", sorted(unknown))
    scheduler = Scheduler(
        worker_id=f"{owner_prefix(options.name)}{os.getpid()}-{secrets.token_hex(3)}",
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
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, scheduler.request_stop)
    log.info("worker %s running %s", scheduler.worker_id, options.operations or registry.names())
    try:
        return await scheduler.run(burst=options.burst)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await outbox.aclose()
        await service.aclose()


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
    store = cast(WorkStore, await manager.store())
    leases = await store.work_list_leases(owner_prefix(name))
    counts = await store.work_count_by_status()
    return WorkerStatus(name, path, depth, corrupt, leases, counts, time.time())
