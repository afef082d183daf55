"""ContainerProcessor: carries each claimed container job to its end.

The Scheduler's ContainerJobSource claims jobs (with leases) and hands each to `process`.
For each job: pending -> launching (one write; the host's slot is taken in the same store
transaction) -> launch on the host's executor -> running -> poll until it ends or its
timeout passes -> harvest exit code, logs, timings and peak memory -> completed | failed |
timeout -> remove the container. A launch that fails for the host's sake (unreachable,
misconfigured) counts against the host (health.py); a job the caller did not pin to its host
is then re-routed to another healthy host of the same executor type that may run it (each
host once per claim, after a back-off), its `routing_reason` saying so. Otherwise a
transient launch error goes launching -> retrying -> queued with backoff, up to max_retries,
on the same host. Before each launch the isolation rule is asked again (a non-admin's job on
a host that stopped isolating it is re-routed or failed, never run). A job with an exit
retry policy whose container exits with one of its codes goes running -> retrying -> queued
and runs again after a back-off, up to the policy's own max_retries; each run is recorded
(exit_attempts). The lease is renewed while the job runs; a job cancelled meanwhile has its
container stopped. An executor or store failure on the way is a failed attempt: the job is
handed back, claimed again after a back-off and failed with that error once its attempts are
used up. A job whose processor died is claimed again after its lease expires and picked up
where it was: a running container is monitored, not launched twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from src.services import metrics
from src.services.backoff import AttemptPolicy, backoff
from src.services.containers.executors.base import ContainerExecutor, HarvestResult
from src.services.containers.executors.errors import ExecutorError
from src.services.containers.factory import ExecutorFactory, stop_container
from src.services.containers.health import count_failed_launch, is_host_fault
from src.services.containers.routing import choose_host
from src.services.domain import Failure, utcnow
from src.services.domain.containers import (
    MAX_HEALTH_FAILURES,
    ContainerJob,
    ContainerJobStatus,
    EnvironmentVariableTemplate,
    ExecutorHost,
    ExitAttempt,
    isolation_refusal,
)
from src.services.errors import BulkJobError, Conflict, HostFull, InvalidInput
from src.services.leases import LeaseWatch, run_under_lease
from src.services.store.base import Store

log = logging.getLogger(__name__)

S = ContainerJobStatus
#: What `_carry` returns once the job has its final status (no lease left to hand back).
ENDED: Literal["ended"] = "ended"
#: Seconds past a job's timeout before the processor stops it itself (the executor's own
#: enforcement comes first).
TIMEOUT_GRACE_S = 5.0
FIRST_POLL_S = 0.02


@dataclass
class ProcessorStats:
    jobs: int = 0
    #: Seconds inside executor calls (launch, wait, harvest, clean-up).
    executor_s: float = 0.0
    #: Seconds from claim to the job's end, summed over jobs.
    total_s: float = 0.0

    @property
    def overhead_per_job_s(self) -> float:
        return (self.total_s - self.executor_s) / self.jobs if self.jobs else 0.0


class ContainerProcessor:
    """Carries claimed container jobs, one `process` call each, through a narrow port: the
    store and the executors (ExecutorFactory). The Scheduler's ContainerJobSource claims the
    jobs and hands them here."""

    def __init__(
        self,
        store: Store,
        executors: ExecutorFactory,
        poll_interval_s: float = 1.0,
        retry_backoff_s: float = 1.0,
        policy: AttemptPolicy | None = None,
        failure_threshold: int = MAX_HEALTH_FAILURES,
    ) -> None:
        self.store = store
        self.executors = executors
        self.poll_interval_s = poll_interval_s
        self.retry_backoff_s = retry_backoff_s
        self.policy = policy or AttemptPolicy()
        #: Failed launches (and probes) in a row that take a host out of routing.
        self.failure_threshold = failure_threshold
        self.stats = ProcessorStats()

    async def process(self, job: ContainerJob, owner: str, lease_s: float) -> None:
        """Take a job this worker claimed to its end (or hand it back when stopped)."""
        started = time.perf_counter()
        watch = LeaseWatch(
            renew=partial(self.store.container_heartbeat, job.id, owner, lease_s),
            interval_s=lease_s / 3,
            stop_on={S.CANCELLED.value},
            on_stop=partial(self._stop_cancelled, job.id),
            label=f"container job {job.id}",
        )
        outcome: Failure | Literal["ended"] | None = None
        try:
            outcome = await run_under_lease(self._carry(job), watch)
        finally:
            if outcome != ENDED:  # an ended job's final transition dropped its lease
                await self._release(job, owner, outcome)
            self.stats.jobs += 1
            self.stats.total_s += time.perf_counter() - started

    async def _stop_cancelled(self, job_id: str) -> None:
        job = await self.store.container_get(job_id)
        if job is not None and job.get_execution_identifier():
            await stop_container(self.executors, job)

    async def _release(
        self, job: ContainerJob, owner: str, failure: Failure | Literal["ended"] | None
    ) -> None:
        """Hand the lease back: a finished job keeps none, a failed attempt backs off (or
        fails the job once its attempts are used up: its container is stopped then)."""
        failure = None if failure == ENDED else failure
        try:
            status = await asyncio.shield(self.store.container_release(job.id, owner, failure))
        except BulkJobError:
            log.warning("could not release container job %s", job.id, exc_info=True)
            return
        if failure is not None and status == S.FAILED and job.get_execution_identifier():
            await stop_container(self.executors, job)

    async def _carry(self, job: ContainerJob) -> Failure | Literal["ended"] | None:
        """Take the job from wherever it is to a final status: ENDED once it has one, a
        failure to hand back when an executor or the store failed on the way (the next
        attempt comes after a back-off), None to hand it back as it is."""
        try:
            host = await self.executors.host_of(job)  # read once per host, for the whole job
            if job.status in (S.LAUNCHING, S.RUNNING) and job.get_execution_identifier():
                job = await self._resume(job)
            else:
                job, host = await self._launch_with_retries(job, host)
            while job.status == S.RUNNING:
                executor = await self.executors.executor_for_host(host)
                job = await self._finish(job, host, executor)
                if job.status == S.RETRYING:  # its exit code asks for another run
                    job, host = await self._rerun(job)
            return ENDED if job.is_terminal_status else None
        except HostFull as exc:
            await self._wait_for_slot(job, exc)
        except Conflict as exc:
            log.info("container job %s changed under us: %s", job.id, exc)
        except Exception as exc:  # an executor, the store, a bad result: a failed attempt
            log.warning("container job %s: %s", job.id, exc, extra=_context(job))
            return self.policy.failure(job.attempts, f"{type(exc).__name__}: {exc}")
        return None

    async def _rerun(self, job: ContainerJob) -> tuple[ContainerJob, ExecutorHost]:
        """After the exit retry's back-off, launch the job again, on the host it has now
        (it may have been moved while it waited)."""
        await asyncio.sleep(job.exit_attempts[-1].retry_in_s or 0.0)
        job = await self._transition(job, S.QUEUED)
        return await self._launch_with_retries(job, await self.executors.host_of(job))

    async def _wait_for_slot(self, job: ContainerJob, exc: HostFull) -> None:
        """The host filled up meanwhile: back to pending and handed back (claims skip a full
        host, so it waits without being claimed again until a slot frees)."""
        log.info("container job %s waits for a slot: %s", job.id, exc)
        with contextlib.suppress(Conflict):
            await self._transition(job, S.PENDING, {"status_message": str(exc)})

    async def _resume(self, job: ContainerJob) -> ContainerJob:
        """A job another processor launched before it died: monitor the same container."""
        log.info("resuming container job %s (%s)", job.id, job.get_execution_identifier())
        if job.status == S.LAUNCHING:
            job = await self._transition(job, S.RUNNING, {"started_at": utcnow()})
        return job

    async def _launch_with_retries(
        self, job: ContainerJob, host: ExecutorHost
    ) -> tuple[ContainerJob, ExecutorHost]:
        """Launch the job: on its host, or -- when that host fails it and the caller did not
        pin the job there -- on another (each host at most once per claim, after a back-off).
        Returns the job and the host it ended up on."""
        if job.status == S.LAUNCHING:  # died mid-launch: no container id, try again
            job = await self._transition(job, S.RETRYING, {"status_message": "launch interrupted"})
        tried = {host.id}
        while True:
            refusal = isolation_refusal(host, job.untrusted)
            if refusal is not None:
                # The host's config changed since the job was routed: a non-admin's command
                # never runs unisolated; it goes elsewhere or fails with the reason.
                moved = await self._fail_over(job, host, refusal, tried)
                if moved is None:
                    return await self._fail(job, refusal), host
            else:
                job = await self._to_launching(job)
                executor = await self.executors.executor_for_host(host)
                try:
                    return await self._launch(job, executor), host
                except ExecutorError as exc:
                    moved = await self._host_failed(job, host, exc, tried)
                    if moved is None:
                        job = await self._launch_failed(job, exc)
                        if job.status != S.RETRYING:
                            return job, host
                        await asyncio.sleep(backoff(job.retry_count - 1, self.retry_backoff_s))
                        continue
            job, host = moved
            await self._pause_before(len(tried))

    async def _to_launching(self, job: ContainerJob) -> ContainerJob:
        if job.status == S.RETRYING:  # a pending job goes straight to launching
            job = await self._transition(job, S.QUEUED)
        return await self._transition(job, S.LAUNCHING)

    async def _pause_before(self, hosts_tried: int) -> None:
        """The back-off before a launch on the next host: every retry path backs off."""
        await asyncio.sleep(backoff(hosts_tried - 2, self.retry_backoff_s))

    async def _host_failed(
        self, job: ContainerJob, host: ExecutorHost, exc: ExecutorError, tried: set[str]
    ) -> tuple[ContainerJob, ExecutorHost] | None:
        """A launch failed: when it was the host's fault, count it against the host and move
        an unpinned job to another host; returns (job, host) when it moved."""
        if not is_host_fault(exc):
            return None
        await count_failed_launch(self.store, host, exc, self.failure_threshold)
        return await self._fail_over(job, host, f"launch failed: {exc}", tried)

    async def _fail_over(
        self, job: ContainerJob, host: ExecutorHost, why: str, tried: set[str]
    ) -> tuple[ContainerJob, ExecutorHost] | None:
        """Re-route a job the caller did not pin to the best other healthy host of the same
        executor type that may run it (routing's rules, isolation included), not yet tried
        in this claim; None when the job is pinned or no such host exists."""
        if job.host_pinned:
            return None
        others = [
            other
            for other in await self.store.host_list(active_only=True)
            if other.id not in tried and other.executor_type == host.executor_type
        ]
        template = await self._template(job)
        try:
            decision = choose_host(job, others, template)
        except InvalidInput:
            return None  # nowhere else to go: the job retries on its own host
        target = decision.host
        tried.add(target.id)
        fields = {
            "host_id": target.id,
            "executor_type": target.executor_type,
            "routing_reason": f"failover from {host.name} ({why}); {decision.reason}",
            "estimated_cost": decision.estimated_cost,
            "status_message": f"re-routed from {host.name} to {target.name}: {why}",
        }
        log.warning(
            "container job %s: %s on %s; re-routed to %s",
            job.id,
            why,
            host.name,
            target.name,
            extra=_context(job),
        )
        # launching -> retrying (the old host's slot is freed); a job not yet launching keeps
        # its status. The store checks the isolation rule again as it writes the host.
        status = S.RETRYING if job.status == S.LAUNCHING else job.status
        return await self._transition(job, status, fields), target

    async def _fail(self, job: ContainerJob, message: str) -> ContainerJob:
        return await self._transition(job, S.FAILED, {"status_message": message})

    async def _launch(self, job: ContainerJob, executor: ContainerExecutor) -> ContainerJob:
        env = await self._environment(job)
        # Shielded: a processor shutting down (or losing the lease) mid-launch still records
        # the container it started, so the next processor monitors it instead of starting
        # a second one.
        return await asyncio.shield(self._launch_and_record(job, executor, env))

    async def _launch_and_record(
        self, job: ContainerJob, executor: ContainerExecutor, env: dict[str, str]
    ) -> ContainerJob:
        with self._executor_time():
            launched = await executor.launch_job(job, env)
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

    async def _finish(
        self, job: ContainerJob, host: ExecutorHost, executor: ContainerExecutor
    ) -> ContainerJob:
        execution_id = job.get_execution_identifier()
        with self._executor_time():
            timed_out = await self._wait(job, executor, execution_id)
            result = await executor.harvest_job(job)
        if timed_out:
            result = dataclasses.replace(result, status="timeout", reason="timeout")
        done = await self._record(job, result, host)
        with self._executor_time():
            await stop_container(self.executors, job, executor)
        return done

    @contextlib.contextmanager
    def _executor_time(self) -> Iterator[None]:
        """Count the time inside an executor call in the figures (the rest is overhead)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stats.executor_s += time.perf_counter() - started

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

    async def _record(
        self, job: ContainerJob, result: HarvestResult, host: ExecutorHost
    ) -> ContainerJob:
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
        # One report per launch: a retried write after a lost reply is applied once.
        report_id = f"{job.id}:{job.get_execution_identifier()}:final"
        rerun_in = exit_retry_delay(job, result)
        if job.exit_retry is not None:
            attempt = _exit_attempt(job, result, fields, rerun_in)
            fields["exit_attempts"] = [*job.exit_attempts, attempt]
        if rerun_in is not None:
            fields.pop("completed_at")
            fields["status_message"] = _rerun_message(job, result, rerun_in)
            return await self._transition(job, S.RETRYING, fields, report_id)
        fields["actual_cost"] = _actual_cost(job, fields, host)
        done = await self._transition(job, ContainerJobStatus(result.status), fields, report_id)
        metrics.CONTAINER_JOBS_FINISHED.labels(job.executor_type, result.status).inc()
        return done

    async def _transition(
        self,
        job: ContainerJob,
        status: ContainerJobStatus,
        fields: dict[str, Any] | None = None,
        report_id: str | None = None,
    ) -> ContainerJob:
        return await self.store.container_transition(job.id, status, fields, report_id)

    async def _environment(self, job: ContainerJob) -> dict[str, str]:
        return job.get_all_environment_variables(await self._template(job))

    async def _template(self, job: ContainerJob) -> EnvironmentVariableTemplate | None:
        if job.environment_template_id is None:
            return None
        return await self.store.template_get(job.environment_template_id)


def exit_retry_delay(job: ContainerJob, result: HarvestResult) -> float | None:
    """Seconds to wait before running the job again, when its exit retry policy asks for a
    run after this one's exit code and has runs left; None when this run is the last."""
    policy = job.exit_retry
    if policy is None or result.status != "failed":
        return None
    if result.exit_code not in policy.retry_on_exit_codes:
        return None
    reruns = sum(1 for attempt in job.exit_attempts if attempt.retry_in_s is not None)
    if reruns >= policy.max_retries:
        return None
    return backoff(reruns, policy.backoff_s)


def _exit_attempt(
    job: ContainerJob, result: HarvestResult, fields: dict[str, Any], rerun_in: float | None
) -> ExitAttempt:
    """The run that just ended, as the job's exit_attempts keep it."""
    error = ""
    if result.status != "completed":
        error = result.reason or result.stderr.strip()[-500:]
    return ExitAttempt(
        attempt=len(job.exit_attempts) + 1,
        status=S(result.status),
        exit_code=result.exit_code,
        error=error,
        started_at=fields.get("started_at") or job.started_at,
        finished_at=fields["completed_at"],
        retry_in_s=rerun_in,
    )


def _rerun_message(job: ContainerJob, result: HarvestResult, rerun_in: float) -> str:
    policy_runs = (job.exit_retry.max_retries if job.exit_retry else 0) + 1
    run = len(job.exit_attempts) + 1
    return (
        f"exit code {result.exit_code} (run {run} of at most {policy_runs}); running again"
        f" in {rerun_in:.1f} s"
    )


def _actual_cost(job: ContainerJob, fields: dict[str, Any], host: ExecutorHost) -> float | None:
    """The host's per-job price plus its hourly price for the time the job ran."""
    if job.estimated_cost is None:
        return None  # the host has no prices
    started, finished = fields.get("started_at") or job.started_at, fields["completed_at"]
    hours = (finished - started).total_seconds() / 3600 if started else 0.0
    return round((host.cost_per_job or 0.0) + (host.cost_per_hour or 0.0) * hours, 6)


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
