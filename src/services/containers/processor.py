"""ContainerProcessor: claims container jobs with leases and carries each one to its end.

For each claimed job: queued -> launching (the host's slot is taken in the same store
transaction) -> launch on the host's executor -> running -> poll until it ends or its
timeout passes -> harvest exit code, logs, timings and peak memory -> completed | failed |
timeout -> remove the container. A transient launch error goes launching -> retrying ->
queued with backoff, up to max_retries. The lease is renewed while the job runs; a job
cancelled meanwhile has its container stopped. A job whose processor died is claimed again
after its lease expires and picked up where it was: a running container is monitored, not
launched twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from src.config import Settings
from src.services import metrics
from src.services.containers.executors.base import ContainerExecutor, HarvestResult
from src.services.containers.executors.errors import ExecutorError
from src.services.containers.models import ContainerJob, ContainerJobStatus
from src.services.containers.service import ContainerJobService
from src.services.domain import utcnow
from src.services.errors import BulkJobError, Conflict, HostFull, NotFound
from src.services.job_worker import worker_id

log = logging.getLogger(__name__)

S = ContainerJobStatus
#: Seconds past a job's timeout before the processor stops it itself (the executor's own
#: enforcement comes first).
TIMEOUT_GRACE_S = 5.0
FIRST_POLL_S = 0.02
#: Seconds a job waits for a slot on a full host before it is claimed again.
HOST_FULL_WAIT_S = 2.0
#: Failures (executor or store errors while carrying a job) after which it is failed.
MAX_PROCESSOR_ERRORS = 5


@dataclass
class ProcessorStats:
    jobs: int = 0
    #: Seconds spent inside executor calls and waiting for containers to finish.
    executor_s: float = 0.0
    #: Seconds from claim to the job's end, summed over jobs.
    total_s: float = 0.0

    @property
    def overhead_per_job_s(self) -> float:
        return (self.total_s - self.executor_s) / self.jobs if self.jobs else 0.0


class ContainerProcessor:
    def __init__(
        self,
        service: ContainerJobService,
        concurrency: int = 4,
        poll_interval_s: float = 1.0,
        lease_s: float | None = None,
        retry_backoff_s: float = 1.0,
        owner: str | None = None,
    ) -> None:
        self.service = service
        self.concurrency = concurrency
        self.poll_interval_s = poll_interval_s
        self.lease_s = lease_s or service.manager.settings.bulkjobs_lease_seconds
        self.retry_backoff_s = retry_backoff_s
        self.owner = owner or worker_id("containers")
        self.stats = ProcessorStats()
        self._running: set[asyncio.Task[None]] = set()
        #: Jobs whose lease is kept for a while instead of handed back (seconds).
        self._hold: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._stopping = False

    # -- the loop --------------------------------------------------------------------------

    async def tick(self) -> int:
        """Claim jobs for the free slots and start them; returns how many."""
        free = self.concurrency - len(self._running)
        if free <= 0 or self._stopping:
            return 0
        store = await self.service.store()
        jobs = await store.container_claim(self.owner, self.lease_s, free)
        metrics.CLAIMS.labels("container_job").inc(len(jobs))
        for job in jobs:
            task = asyncio.create_task(self.process(job), name=f"container-{job.id}")
            self._running.add(task)
            task.add_done_callback(self._finished)
        return len(jobs)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("container job processing crashed", exc_info=task.exception())
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, once: bool = False) -> None:
        """Process jobs until stopped; with once=True, return when none are left."""
        while not self._stopping:
            try:
                claimed = await self.tick()
            except BulkJobError:
                log.warning("claiming container jobs failed; retrying", exc_info=True)
                claimed = 0
            if once and not claimed and not self._running:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

    async def aclose(self) -> None:
        """Stop claiming; jobs in progress hand their leases back (containers keep running
        and the next processor to claim them monitors them)."""
        self._stopping = True
        self._wake.set()
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    # -- one job ---------------------------------------------------------------------------

    async def process(self, job: ContainerJob) -> None:
        started = time.perf_counter()
        work = asyncio.create_task(self._carry(job), name=f"carry-{job.id}")
        watcher = asyncio.create_task(self._watch(job.id, work), name=f"lease-{job.id}")
        try:
            await work
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await self._release(job.id, self._hold.pop(job.id, None))
            self.stats.jobs += 1
            self.stats.total_s += time.perf_counter() - started

    async def _watch(self, job_id: str, work: asyncio.Task[None]) -> None:
        """Renew the lease; stop the work when the job was cancelled or the lease lost."""
        store = await self.service.store()
        while not work.done():
            await asyncio.sleep(self.lease_s / 3)
            try:
                status = await store.container_heartbeat(job_id, self.owner, self.lease_s)
            except (Conflict, NotFound):
                log.warning("lease on container job %s lost; leaving it", job_id)
                work.cancel()
                return
            except BulkJobError:
                log.warning("heartbeat for container job %s failed", job_id, exc_info=True)
                continue
            if status == S.CANCELLED:
                await self._stop_cancelled(job_id)
                work.cancel()
                return

    async def _stop_cancelled(self, job_id: str) -> None:
        job = await (await self.service.store()).container_get(job_id)
        if job is not None and job.get_execution_identifier():
            await self.service.stop_container(job)

    async def _release(self, job_id: str, hold_s: float | None = None) -> None:
        """Hand the lease back -- or, with `hold_s`, keep it that long so nobody claims the
        job again at once (a full host, a failing backend)."""
        store = await self.service.store()
        try:
            if hold_s is None:
                await store.container_release(job_id, self.owner)
            else:
                await store.container_heartbeat(job_id, self.owner, hold_s)
        except BulkJobError:
            log.warning("could not release container job %s", job_id, exc_info=True)

    async def _carry(self, job: ContainerJob) -> None:
        """Take the job from wherever it is to a final status."""
        try:
            if job.status in (S.LAUNCHING, S.RUNNING) and job.get_execution_identifier():
                job = await self._resume(job)
            else:
                job = await self._launch_with_retries(job)
            if job.status == S.RUNNING:
                await self._finish(job)
        except HostFull as exc:
            await self._wait_for_slot(job, exc)
        except Conflict as exc:
            log.info("container job %s changed under us: %s", job.id, exc)
        except BulkJobError as exc:  # an executor or the store failed: not a tight loop
            await self._note_failure(job.id, exc)

    async def _wait_for_slot(self, job: ContainerJob, exc: HostFull) -> None:
        """The host is full: back to pending, claimable again after a pause."""
        log.info("container job %s waits for a slot: %s", job.id, exc)
        with contextlib.suppress(Conflict):
            await self._transition(job, S.PENDING, {"status_message": str(exc)})
        self._hold[job.id] = min(self.lease_s, HOST_FULL_WAIT_S)

    async def _note_failure(self, job_id: str, exc: BulkJobError) -> None:
        """Count the failure on the job; after MAX_PROCESSOR_ERRORS give up on it, else keep
        the lease so the next attempt comes after it expires, not at once."""
        log.warning("container job %s: %s", job_id, exc, extra={"job_id": job_id})
        store = await self.service.store()
        try:
            job = await store.container_get(job_id)
            if job is None or job.is_terminal_status:
                return
            errors = int(job.executor_metadata.get("processor_errors", 0)) + 1
            metadata = job.executor_metadata | {"processor_errors": errors}
            if errors < MAX_PROCESSOR_ERRORS:
                await store.container_transition(
                    job_id, job.status, {"executor_metadata": metadata}
                )
                self._hold[job_id] = self.lease_s
                return
            message = f"gave up after {errors} processor errors; last: {exc}"
            await store.container_transition(
                job_id, S.FAILED, {"executor_metadata": metadata, "status_message": message}
            )
            if job.get_execution_identifier():
                await self.service.stop_container(job)
        except BulkJobError:
            log.warning("could not record the failure of container job %s", job_id, exc_info=True)
            self._hold[job_id] = self.lease_s

    async def _resume(self, job: ContainerJob) -> ContainerJob:
        """A job another processor launched before it died: monitor the same container."""
        log.info("resuming container job %s (%s)", job.id, job.get_execution_identifier())
        if job.status == S.LAUNCHING:
            job = await self._transition(job, S.RUNNING, {"started_at": utcnow()})
        return job

    async def _launch_with_retries(self, job: ContainerJob) -> ContainerJob:
        if job.status == S.LAUNCHING:  # died mid-launch: no container id, try again
            job = await self._transition(job, S.RETRYING, {"status_message": "launch interrupted"})
        while True:
            if job.status in (S.PENDING, S.RETRYING):
                job = await self._transition(job, S.QUEUED)
            job = await self._transition(job, S.LAUNCHING)
            try:
                return await self._launch(job)
            except ExecutorError as exc:
                job = await self._launch_failed(job, exc)
                if job.status != S.RETRYING:
                    return job
                await asyncio.sleep(self._backoff(job.retry_count))

    async def _launch(self, job: ContainerJob) -> ContainerJob:
        executor = await self._executor(job)
        env = await self._environment(job)
        # Shielded: a processor shutting down (or losing the lease) mid-launch still records
        # the container it started, so the next processor monitors it instead of starting
        # a second one.
        return await asyncio.shield(self._launch_and_record(job, executor, env))

    async def _launch_and_record(
        self, job: ContainerJob, executor: ContainerExecutor, env: dict[str, str]
    ) -> ContainerJob:
        started = time.perf_counter()
        try:
            launched = await executor.launch_job(job, env)
        finally:
            self.stats.executor_s += time.perf_counter() - started
        job.set_execution_identifier(launched.execution_id)
        fields = {
            "execution_id": job.execution_id,
            "external_execution_id": job.external_execution_id,
            "executor_metadata": job.executor_metadata | launched.metadata,
            "started_at": utcnow(),
        }
        try:
            return await self._transition(job, S.RUNNING, fields)
        except Conflict:  # cancelled while it launched: the container must not outlive it
            await executor.cleanup(launched.execution_id)
            raise

    async def _launch_failed(self, job: ContainerJob, exc: ExecutorError) -> ContainerJob:
        message = f"launch failed: {exc}"
        if exc.transient and job.retry_count < job.max_retries:
            log.warning("container job %s: %s; retrying", job.id, message, extra=_context(job))
            fields = {"retry_count": job.retry_count + 1, "status_message": message}
            return await self._transition(job, S.RETRYING, fields)
        log.warning("container job %s: %s", job.id, message, extra=_context(job))
        return await self._transition(job, S.FAILED, {"status_message": message})

    def _backoff(self, attempt: int) -> float:
        delay: float = self.retry_backoff_s * 2.0 ** max(0, attempt - 1)
        return min(30.0, delay) * random.uniform(0.8, 1.2)

    async def _finish(self, job: ContainerJob) -> None:
        executor = await self._executor(job)
        execution_id = job.get_execution_identifier()
        started = time.perf_counter()
        try:
            timed_out = await self._wait(job, executor, execution_id)
            result = await executor.harvest_job(job)
        finally:
            self.stats.executor_s += time.perf_counter() - started
        if timed_out:
            result = dataclasses.replace(result, status="timeout", reason="timeout")
        await self._record(job, result)
        await self.service.stop_container(job)

    async def _wait(
        self, job: ContainerJob, executor: ContainerExecutor, execution_id: str
    ) -> bool:
        """Poll until the container ends; True when the processor had to stop it."""
        deadline = _deadline(job)
        delay = FIRST_POLL_S
        while True:
            status = await executor.check_status(execution_id)
            if status.state != "running":
                return False
            if time.time() > deadline:
                await _stop(executor, execution_id)
                log.warning(
                    "container job %s overran its timeout; stopped it", job.id, extra=_context(job)
                )
                return True
            await self._pause(executor, execution_id, delay)
            delay = min(delay * 2, self.poll_interval_s)

    @staticmethod
    async def _pause(executor: ContainerExecutor, execution_id: str, delay: float) -> None:
        """Sleep until the next look -- or less, when the executor can say it ended."""
        wait_for_exit = getattr(executor, "wait_for_exit", None)
        if wait_for_exit is not None:
            await wait_for_exit(execution_id, delay)
        else:
            await asyncio.sleep(delay)

    async def _record(self, job: ContainerJob, result: HarvestResult) -> None:
        fields: dict[str, Any] = {
            "exit_code": result.exit_code,
            "stdout_log": result.stdout,
            "stderr_log": result.stderr,
            "completed_at": result.finished_at or utcnow(),
            "max_memory_usage": result.max_memory_usage,
            "status_message": result.reason,
            "executor_metadata": job.executor_metadata | result.metadata,
        }
        if result.started_at is not None:
            fields["started_at"] = result.started_at
        fields["actual_cost"] = await self._actual_cost(job, fields)
        # One report per launch: a retried write after a lost reply is applied once.
        report_id = f"{job.id}:{job.get_execution_identifier()}:final"
        await self._transition(job, ContainerJobStatus(result.status), fields, report_id)
        metrics.CONTAINER_JOBS_FINISHED.labels(job.executor_type, result.status).inc()

    async def _transition(
        self,
        job: ContainerJob,
        status: ContainerJobStatus,
        fields: dict[str, Any] | None = None,
        report_id: str | None = None,
    ) -> ContainerJob:
        store = await self.service.store()
        return await store.container_transition(job.id, status, fields, report_id)

    async def _actual_cost(self, job: ContainerJob, fields: dict[str, Any]) -> float | None:
        """The host's per-job price plus its hourly price for the time the job ran."""
        if job.estimated_cost is None:
            return None  # the host has no prices
        host = await (await self.service.factory()).host_of(job)
        started, finished = fields.get("started_at") or job.started_at, fields["completed_at"]
        hours = (finished - started).total_seconds() / 3600 if started else 0.0
        return round((host.cost_per_job or 0.0) + (host.cost_per_hour or 0.0) * hours, 6)

    async def _executor(self, job: ContainerJob) -> ContainerExecutor:
        return await (await self.service.factory()).get_executor(job)

    async def _environment(self, job: ContainerJob) -> dict[str, str]:
        template = None
        if job.environment_template_id:
            store = await self.service.store()
            template = await store.template_get(job.environment_template_id)
        return job.get_all_environment_variables(template)


def _deadline(job: ContainerJob) -> float:
    started = (job.started_at or utcnow()).timestamp()
    return started + job.timeout_seconds + TIMEOUT_GRACE_S


async def _stop(executor: ContainerExecutor, execution_id: str) -> None:
    """Stop a run but keep its output for the harvest (cleanup afterwards removes it);
    executors without a separate stop are cleaned up at once."""
    stop = getattr(executor, "stop", None)
    await (stop(execution_id) if stop is not None else executor.cleanup(execution_id))


def _context(job: ContainerJob) -> dict[str, Any]:
    """Log fields for a container job (see src/services/logs.py)."""
    return {"job_id": job.id, "host_id": job.host_id, "user_id": job.created_by}


def container_processor(
    service: ContainerJobService, settings: Settings, **options: Any
) -> ContainerProcessor:
    """A processor configured from the settings (options override them)."""
    values: dict[str, Any] = {
        "concurrency": settings.bulkjobs_container_concurrency,
        "poll_interval_s": settings.bulkjobs_container_poll_s,
        "lease_s": settings.bulkjobs_lease_seconds,
    }
    return ContainerProcessor(service, **(values | options))
