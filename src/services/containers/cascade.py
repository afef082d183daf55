"""The one cascade from a bulk job to its container jobs: cancelling a bulk job cancels every
unfinished container job it started and stops their containers. `bulk_job_manager.cancel_job`
(and so the HTTP route) and a container_batch stage that sees its job cancelled use it."""

from __future__ import annotations

import logging

from src.services.containers.factory import ExecutorFactory, stop_container
from src.services.domain.containers import ContainerJobStatus
from src.services.store.base import Store

log = logging.getLogger(__name__)

#: Statuses a container job can be cancelled from.
UNFINISHED = ("pending", "queued", "retrying", "launching", "running")
#: Jobs cancelled per store call.
BATCH = 500


async def cancel_container_jobs(store: Store, executors: ExecutorFactory, bulk_job_id: str) -> int:
    """Cancel the bulk job's unfinished container jobs and stop their containers; returns how
    many were cancelled. Jobs that ended meanwhile are left as they are."""
    cancelled = 0
    for status in UNFINISHED:
        while jobs := await store.container_list(
            status=status, bulk_job_id=bulk_job_id, limit=BATCH
        ):
            updated, _ = await store.container_transition_many(
                [job.id for job in jobs],
                ContainerJobStatus.CANCELLED,
                {"status_message": "bulk job cancelled"},
            )
            cancelled += len(updated)
            for job in updated:  # as written: it may have launched between list and cancel
                if job.get_execution_identifier():
                    await stop_container(executors, job)
            if len(jobs) < BATCH or not updated:
                break
    if cancelled:
        log.info("cancelled %d container jobs of bulk job %s", cancelled, bulk_job_id)
    return cancelled
