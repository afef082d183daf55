"""JobWorker: claims runnable bulk jobs and runs them, a bounded number at a time.

The server starts one in its lifespan; `bulkjobs worker` runs one per process. Jobs are only
claimed for the job types this worker has processors for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket

from src.services import metrics
from src.services.bulk_job_manager import BulkJobManager
from src.services.domain import Job
from src.services.errors import StoreUnavailable
from src.services.job_types.registry import JobTypeRegistry
from src.services.runner import JobRunner

log = logging.getLogger(__name__)


def worker_id(prefix: str = "worker") -> str:
    """A worker id that is unique across hosts and processes."""
    return f"{prefix}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class JobWorker:
    def __init__(
        self,
        manager: BulkJobManager,
        registry: JobTypeRegistry,
        concurrency: int = 4,
        poll_interval_s: float = 0.5,
        owner: str | None = None,
    ) -> None:
        self.manager = manager
        self.registry = registry
        self.concurrency = concurrency
        self.poll_interval_s = poll_interval_s
        self.runner = JobRunner(manager, owner or worker_id())
        self._running: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False

    @property
    def owner(self) -> str:
        return self.runner.owner

    def wake(self) -> None:
        """Look for work now instead of at the next poll."""
        self._wake.set()

    async def tick(self) -> int:
        """Claim as many jobs as there are free slots and start them; returns how many."""
        free = self.concurrency - len(self._running)
        if free <= 0 or self._stopping:
            return 0
        store = await self.manager.store()
        jobs = await store.claim(self.owner, self.runner.lease_s, self.registry.names(), free)
        metrics.CLAIMS.labels("bulk_job").inc(len(jobs))
        for job in jobs:
            self._start(job)
        return len(jobs)

    def _start(self, job: Job) -> None:
        processors = self.registry.get(job.job_type).processors
        task = asyncio.create_task(self.runner.run_claimed(job, processors), name=f"run-{job.id}")
        self._running.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("job runner crashed", exc_info=task.exception())
        self._wake.set()

    async def run(self, burst: bool = False) -> None:
        """Poll for work until stopped; with burst=True, return once nothing is left."""
        while not self._stopping:
            try:
                claimed = await self.tick()
            except StoreUnavailable:
                log.warning("store unavailable; retrying", exc_info=True)
                claimed = 0
            if burst and not claimed and not self._running:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

    async def aclose(self) -> None:
        """Stop claiming; running jobs hand their leases back for another worker."""
        self._stopping = True
        self._wake.set()
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
