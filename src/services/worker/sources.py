"""The built-in operations `bulk_job` and `container_job`: bulk jobs and container jobs are
claimed from their own tables and run by JobRunner and ContainerProcessor, which renew,
write and release their own leases; the Scheduler only bounds them with its semaphore."""

from __future__ import annotations

from functools import partial

from src.services.bulk_job_manager import BulkJobManager
from src.services.containers.processor import ContainerProcessor, container_processor
from src.services.containers.service import ContainerJobService
from src.services.job_types.registry import JobTypeRegistry
from src.services.runner import JobRunner
from src.services.worker.registry import Claim

BULK_JOB = "bulk_job"
CONTAINER_JOB = "container_job"


class BulkJobSource:
    """Pending bulk jobs of the registered job types, and ones whose runner died (they
    resume at their first stage that is not completed)."""

    operation = BULK_JOB

    def __init__(self, manager: BulkJobManager, job_types: JobTypeRegistry) -> None:
        self.manager = manager
        self.job_types = job_types

    async def claim(self, owner: str, limit: int, lease_s: float) -> list[Claim]:
        names = self.job_types.names()
        if not names:
            return []
        store = await self.manager.store()
        jobs = await store.claim(owner, lease_s, names, limit)
        runner = JobRunner(self.manager, owner, lease_s)
        return [
            Claim(
                BULK_JOB,
                job.id,
                partial(runner.run_claimed, job, self.job_types.get(job.job_type).processors),
            )
            for job in jobs
        ]


class ContainerJobSource:
    """Pending container jobs, and unfinished ones whose processor died."""

    operation = CONTAINER_JOB

    def __init__(self, service: ContainerJobService) -> None:
        self.service = service
        self._processors: dict[tuple[str, float], ContainerProcessor] = {}

    def _processor(self, owner: str, lease_s: float) -> ContainerProcessor:
        key = (owner, lease_s)
        if key not in self._processors:
            settings = self.service.manager.settings
            self._processors[key] = container_processor(
                self.service, settings, owner=owner, lease_s=lease_s
            )
        return self._processors[key]

    async def claim(self, owner: str, limit: int, lease_s: float) -> list[Claim]:
        store = await self.service.store()
        jobs = await store.container_claim(owner, lease_s, limit)
        processor = self._processor(owner, lease_s)
        return [Claim(CONTAINER_JOB, job.id, partial(processor.process, job)) for job in jobs]
