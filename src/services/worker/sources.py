"""The built-in job sources: `bulk_job` (BulkJobSource: bulk jobs, run by JobRunner),
`container_job` (ContainerJobSource: container jobs, run by ContainerProcessor),
`webhook_delivery` (WebhookSource: webhook deliveries, sent by WebhookDeliverer),
`retention` (RetentionSource: a periodic sweep deleting old finished jobs) and
`host_health` (HostHealthSource: a probe of each active executor host per interval).

Each claims its items in one store call (fairly across users, within the attempt budget;
see the store's `claim` and `container_claim`), and hands each claimed item to its runner,
which renews the lease, writes the item's state and hands the lease back itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Protocol

from src.config import Settings
from src.services.backoff import AttemptPolicy
from src.services.containers.factory import ExecutorFactory
from src.services.containers.health import probe_host
from src.services.containers.processor import ContainerProcessor
from src.services.domain import ClaimRules
from src.services.domain.containers import ExecutorHost
from src.services.errors import BulkJobError
from src.services.runner import JobPort, JobRunner, StageProcessor, StageRetryPolicy
from src.services.store.base import Store
from src.services.webhooks import WebhookDeliverer, rules_from
from src.services.worker.registry import Claim

log = logging.getLogger(__name__)

BULK_JOB = "bulk_job"
CONTAINER_JOB = "container_job"
RETENTION = "retention"
WEBHOOK_DELIVERY = "webhook_delivery"
HOST_HEALTH = "host_health"
#: Seconds between a worker's asks for due host probes (less when the interval is shorter).
PROBE_ASK_EVERY_S = 1.0
#: The built-in kinds of work a job's changes need (retention is a sweep, not a job's work).
KINDS = (BULK_JOB, CONTAINER_JOB, WEBHOOK_DELIVERY)


class ProcessorLookup(Protocol):
    """The job types a runner has processors for (JobTypeRegistry is one)."""

    def names(self) -> list[str]: ...

    def processors_for(self, job_type: str) -> Mapping[str, StageProcessor]: ...

    def stage_retries_for(self, job_type: str) -> Mapping[str, StageRetryPolicy]: ...


class FixedProcessors:
    """One job type with the processors (and stage retry policies) given
    (process_job_with_stages)."""

    def __init__(
        self,
        job_type: str,
        processors: Mapping[str, StageProcessor],
        retries: Mapping[str, StageRetryPolicy] | None = None,
    ) -> None:
        self.job_type = job_type
        self.processors = processors
        self.retries = retries or {}

    def names(self) -> list[str]:
        return [self.job_type]

    def processors_for(self, job_type: str) -> Mapping[str, StageProcessor]:
        return self.processors

    def stage_retries_for(self, job_type: str) -> Mapping[str, StageRetryPolicy]:
        return self.retries


def attempt_policy(settings: Settings) -> AttemptPolicy:
    return AttemptPolicy(settings.bulkjobs_max_attempts, settings.bulkjobs_retry_backoff_s)


class BulkJobSource:
    """Pending bulk jobs of the job types `lookup` knows, and running ones whose runner died
    (they resume at their first stage that is not completed); with `job_id`, only that job."""

    kind = BULK_JOB

    def __init__(
        self,
        port: JobPort,
        lookup: ProcessorLookup,
        settings: Settings,
        job_id: str | None = None,
    ) -> None:
        self.port = port
        self.lookup = lookup
        self.job_id = job_id
        self.rules = ClaimRules(
            max_attempts=settings.bulkjobs_max_attempts,
            max_running_per_user=settings.bulkjobs_user_max_running,
        )
        self.policy = attempt_policy(settings)
        #: Renewals come often enough that a cancelled job stops soon even when its
        #: processor writes no progress.
        self.heartbeat_cap_s = max(settings.progress_interval_s, 0.05)

    async def claim(self, owner: str, limit: int, lease_s: float) -> list[Claim]:
        names = self.lookup.names()
        if not names:
            return []
        jobs = await self.port.store.claim(owner, lease_s, names, limit, self.job_id, self.rules)
        heartbeat_s = min(self.heartbeat_cap_s, lease_s / 3)
        runner = JobRunner(self.port, owner, lease_s, heartbeat_s, self.policy)
        return [
            Claim(
                BULK_JOB,
                job.id,
                partial(
                    runner.run_claimed,
                    job,
                    self.lookup.processors_for(job.job_type),
                    self.lookup.stage_retries_for(job.job_type),
                ),
            )
            for job in jobs
        ]


class ContainerJobSource:
    """Pending container jobs on hosts with a free slot, and unfinished ones whose processor
    died; with `bulk_job_id`, only that bulk job's."""

    kind = CONTAINER_JOB

    def __init__(
        self,
        store: Store,
        executors: ExecutorFactory,
        settings: Settings,
        bulk_job_id: str | None = None,
        poll_interval_s: float | None = None,
    ) -> None:
        self.store = store
        self.bulk_job_id = bulk_job_id
        self.rules = ClaimRules(max_attempts=settings.bulkjobs_max_attempts)
        self.processor = ContainerProcessor(
            store,
            executors,
            poll_interval_s=poll_interval_s or settings.bulkjobs_container_poll_s,
            policy=attempt_policy(settings),
            failure_threshold=settings.bulkjobs_host_failure_threshold,
        )

    async def claim(self, owner: str, limit: int, lease_s: float) -> list[Claim]:
        jobs = await self.store.container_claim(owner, lease_s, limit, self.bulk_job_id, self.rules)
        return [
            Claim(CONTAINER_JOB, job.id, partial(self.processor.process, job, owner, lease_s))
            for job in jobs
        ]


class RetentionSource:
    """One retention sweep (`sweep`: the manager's delete_expired_jobs) every `interval_s`,
    the first as soon as the worker starts. It holds no lease: every worker may run it, as
    deleting is idempotent and a job one worker deleted is skipped by the others."""

    kind = RETENTION

    def __init__(
        self,
        sweep: Callable[[], Awaitable[int]],
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sweep = sweep
        self.interval_s = interval_s
        self.clock = clock
        self.next_at = clock()
        self.runs = 0

    async def claim(self, owner: str, limit: int, lease_s: float) -> list[Claim]:
        now = self.clock()
        if limit < 1 or now < self.next_at:
            return []
        self.next_at = now + self.interval_s
        self.runs += 1
        return [Claim(RETENTION, f"sweep-{self.runs}", self._run)]

    async def _run(self) -> None:
        try:
            deleted = await self.sweep()
        except (BulkJobError, OSError):  # the next round tries again
            log.warning("retention sweep failed; retrying next round", exc_info=True)
            return
        if deleted:
            log.info("retention: deleted %d finished jobs", deleted)


class WebhookSource:
    """Webhook deliveries that are due: pending ones whose next attempt has come, and ones
    whose worker died mid-delivery (sent again with the same webhook-id)."""

    kind = WEBHOOK_DELIVERY

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.rules = rules_from(settings)
        self.deliverer = WebhookDeliverer.from_settings(store, settings)

    async def claim(self, owner: str, limit: int, lease_s: float) -> list[Claim]:
        claimed = await self.store.webhook_claim(owner, lease_s, limit, self.rules)
        return [
            Claim(
                WEBHOOK_DELIVERY,
                item.delivery.id,
                partial(self.deliverer.deliver, item, owner, lease_s),
            )
            for item in claimed
        ]


class HostHealthSource:
    """Probes of active executor hosts, each due once per BULKJOBS_HOST_HEALTH_INTERVAL_S
    (0: none). The store hands each due host to one worker and moves its next probe on in
    the same transaction, so a fleet of workers probes each host once per interval; a worker
    that dies mid-probe only delays the next one. Each result is recorded on the host."""

    kind = HOST_HEALTH

    def __init__(self, store: Store, executors: ExecutorFactory, settings: Settings) -> None:
        self.store = store
        self.executors = executors
        self.interval_s = settings.bulkjobs_host_health_interval_s
        self.threshold = settings.bulkjobs_host_failure_threshold
        self._next_ask = 0.0

    async def claim(self, owner: str, limit: int, lease_s: float) -> list[Claim]:
        # Probes fall due once per interval, but the Scheduler ticks whenever work ends: ask
        # the store at most once a second (a write each time), not on every tick.
        now = time.monotonic()
        if self.interval_s <= 0 or now < self._next_ask:
            return []
        self._next_ask = now + min(self.interval_s, PROBE_ASK_EVERY_S)
        hosts = await self.store.host_claim_probes(self.interval_s, limit)
        return [Claim(HOST_HEALTH, host.id, partial(self._probe, host)) for host in hosts]

    async def _probe(self, host: ExecutorHost) -> None:
        await probe_host(self.store, self.executors, host, self.threshold)
