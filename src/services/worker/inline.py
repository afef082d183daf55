"""One bulk job run in this process (`process_job_with_stages`, `bulkjobs run`): a Scheduler of
its own claims the job by id, and the kinds of work it needs (its container jobs), until the
job has ended. The job waits its turn like any other (the per-user cap holds here too)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Collection, Mapping

from src.config import Settings
from src.services.containers.factory import ExecutorFactory
from src.services.domain import Job, utcnow
from src.services.runner import JobPort, StageProcessor, StageRetryPolicy
from src.services.worker.registry import OperationRegistry
from src.services.worker.scheduler import Scheduler
from src.services.worker.sources import (
    BULK_JOB,
    CONTAINER_JOB,
    BulkJobSource,
    ContainerJobSource,
    FixedProcessors,
)

#: Seconds between looks for this job's work while it runs or waits its turn.
POLL_S = 0.2


async def run_job_here(
    port: JobPort,
    executors: ExecutorFactory,
    settings: Settings,
    job: Job,
    processors: Mapping[str, StageProcessor],
    kinds: Collection[str],
    retries: Mapping[str, StageRetryPolicy] | None = None,
) -> None:
    """Run `job` with `processors` (and stage retry policies `retries`) to its end here, with
    the kinds of work in `kinds`; return early if another worker holds it."""
    registry = OperationRegistry()
    lookup = FixedProcessors(job.job_type, processors, retries)
    registry.add_source(BulkJobSource(port, lookup, settings, job_id=job.id))
    if CONTAINER_JOB in kinds:
        registry.add_source(
            ContainerJobSource(port.store, executors, settings, job.id, poll_interval_s=POLL_S)
        )
    scheduler = Scheduler(
        worker_id=f"inline-{secrets.token_hex(4)}",
        operations=None,
        claim_batch_size=settings.bulkjobs_container_concurrency,
        max_concurrency=settings.bulkjobs_container_concurrency,
        store=port.store,
        registry=registry,
        lease_s=settings.bulkjobs_lease_seconds,
        poll_interval_s=POLL_S,
        grace_s=0,  # stopped (cancelled): hand everything back at once
        kind_limits={BULK_JOB: 1},
    )
    while True:
        await scheduler.run(burst=True)
        current = await port.store.get_job(job.id)
        if current is None or current.is_terminal or _held_elsewhere(current):
            return
        await asyncio.sleep(POLL_S)  # waiting its turn, or backing off after a failure


def _held_elsewhere(job: Job) -> bool:
    return job.lease_owner is not None and (job.lease_expires_at or utcnow()) > utcnow()
