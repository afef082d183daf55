"""The Scheduler: the one claim loop. It claims work in batches under leases, runs it within
per-kind limits and reports it, wherever work runs: the server's embedded worker, `bulkjobs
worker`, `process_container_jobs`, `bulkjobs run` and `process_job_with_stages`.

`tick()` flushes the outbox, then takes turns over the kinds of work (work items from the
workItems table, and each registered JobSource: bulk jobs, container jobs, ...), claiming up
to `claim_batch_size` items in all, no kind beyond its limit (`max_concurrency` unless
`kind_limits` says otherwise: a bulk job waiting for its container jobs never holds the slots
they need). Work-item results go to the store in batches through a reporter task; a batch
the store does not take is appended to the durable outbox (fsynced) and sent again by later
ticks. The leases of running work items are renewed in one call per interval by a heartbeat
task; an item whose lease is lost is stopped. Items of a JobSource renew, report and release
through their own runner (JobRunner, ContainerProcessor).

Store errors: RateLimited (HTTP 429) waits the Retry-After the store gave; StoreUnavailable
(5xx, connection) backs off exponentially with full jitter; StoreAuthError (401/403) stops
claiming, logs at CRITICAL and makes `run()` raise once running work has ended.

`request_stop()` (SIGTERM) stops claiming, gives running work `grace_s` to finish, then
cancels the rest and hands its leases back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, fields
from typing import Any

from src.services import metrics
from src.services.backoff import backoff
from src.services.domain.work import MAX_WORK_BATCH, ReportAck, WorkItem, WorkReport
from src.services.errors import BulkJobError, RateLimited, StoreAuthError, StoreUnavailable
from src.services.store.base import WorkStore
from src.services.worker.outbox import Outbox, OutboxError
from src.services.worker.registry import Claim, OperationRegistry, WorkContext

log = logging.getLogger(__name__)

#: The kind of work claimed from the workItems table (the others are sources).
WORK_ITEMS = "work items"


@dataclass
class SchedulerStats:
    claimed: int = 0
    completed: int = 0
    failed: int = 0
    #: Acknowledgements of reports (sent directly or from the outbox), by state.
    applied: int = 0
    duplicate: int = 0
    stale: int = 0
    missing: int = 0
    #: Reports written to the outbox because the store did not take them.
    outboxed: int = 0
    leases_lost: int = 0
    released: int = 0

    def count(self, acks: list[ReportAck]) -> None:
        for ack in acks:
            setattr(self, ack.state, getattr(self, ack.state) + 1)

    def as_dict(self) -> dict[str, int]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


class Scheduler:
    def __init__(
        self,
        worker_id: str,
        operations: list[str] | None,
        claim_batch_size: int,
        max_concurrency: int,
        store: WorkStore,
        registry: OperationRegistry,
        outbox: Outbox | None = None,
        lease_s: float = 30.0,
        poll_interval_s: float = 0.5,
        grace_s: float = 30.0,
        kind_limits: Mapping[str, int] | None = None,
    ) -> None:
        """`operations` names what to claim (None: every registered operation and source).
        Without an outbox no work items are claimed (their reports need one)."""
        if claim_batch_size < 1 or max_concurrency < 1:
            raise ValueError("claim_batch_size and max_concurrency must be at least 1")
        self.worker_id = worker_id
        self.operations = operations
        self.claim_batch_size = min(claim_batch_size, MAX_WORK_BATCH)
        self.max_concurrency = max_concurrency
        self.store = store
        self.registry = registry
        self.outbox = outbox
        self.lease_s = lease_s
        self.poll_interval_s = poll_interval_s
        self.grace_s = grace_s
        self.stats = SchedulerStats()
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self.kind_limits = dict(kind_limits or {})
        #: Claimed items in hand, by kind.
        self._held: Counter[str] = Counter()
        self._kind_of: dict[asyncio.Task[None], str] = {}
        self._tick_started_idle = False
        #: The kinds the last tick claimed items of: they may have more waiting.
        self._claimed_kinds: list[str] = []
        #: Work items whose handler is running: their leases are renewed.
        self._executing: dict[str, asyncio.Task[None]] = {}
        self._reports: list[tuple[WorkReport, asyncio.Future[None]]] = []
        self._report_ready = asyncio.Event()
        #: Reports submitted and not yet with the store or in the outbox.
        self._unhandled = 0
        self._wake = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._stopping = False
        self._fatal: BulkJobError | None = None
        self._failures = 0
        self._ticks = 0

    def limit(self, kind: str) -> int:
        """Items of `kind` this scheduler holds at most at once."""
        return self.kind_limits.get(kind, self.max_concurrency)

    def _room(self, kind: str) -> int:
        return self.limit(kind) - self._held[kind]

    def _refill(self, kind: str) -> bool:
        """Whether `kind` has room for a good batch (half its limit): worth a claim now.
        Claiming for every freed slot would cost a store call per item."""
        return self._room(kind) >= max(1, min(self.claim_batch_size, self.limit(kind)) // 2)

    def wake(self) -> None:
        """Look for work now rather than at the next poll (a job was just created)."""
        self._wake.set()

    def _item_operations(self) -> list[str]:
        """Work-item operations to claim. By default only those this worker has handlers
        for: claiming another fleet's operation would fail its items. An operation named
        explicitly but not registered is claimed and failed with a clear error."""
        if self.outbox is None:
            return []
        if self.operations is None:
            return self.registry.item_names()
        sources = set(self.registry.source_names())
        return [name for name in self.operations if name not in sources]

    def _sources(self) -> list[str]:
        names = self.registry.source_names()
        return names if self.operations is None else [n for n in names if n in self.operations]

    @property
    def in_hand(self) -> int:
        """Claimed items not yet finished and reported."""
        return len(self._tasks)

    async def tick(self) -> int:
        """Flush the outbox, claim work for the free slots and start it; returns how many."""
        self._start_background()
        await self.flush_outbox()
        # Claims below may see kinds without room that free up meanwhile: only a tick that
        # started with nothing in hand proves there is no work (burst mode ends on it).
        self._tick_started_idle = not self._tasks
        if self._stopping:
            return 0
        # Each tick a different kind goes first, so a backlog of one kind (work items, say)
        # cannot keep bulk jobs or container jobs from ever being claimed.
        kinds = [WORK_ITEMS, *self._sources()]
        first = self._ticks % len(kinds)
        self._ticks += 1
        started = 0
        self._claimed_kinds = []
        for kind in kinds[first:] + kinds[:first]:
            room = min(self.claim_batch_size - started, self._room(kind))
            if room > 0 and (count := await self._claim(kind, room)):
                started += count
                self._claimed_kinds.append(kind)
        self.stats.claimed += started
        metrics.OUTBOX_DEPTH.set(len(self.outbox) if self.outbox is not None else 0)
        return started

    async def _claim(self, kind: str, limit: int) -> int:
        """Claim and start up to `limit` items of one kind; returns how many."""
        if kind == WORK_ITEMS:
            operations = self._item_operations()
            if not operations:
                return 0
            items = await self.store.work_claim(self.worker_id, operations, limit, self.lease_s)
            for item in items:
                self._spawn(self._run_item(item), f"item-{item.id}", WORK_ITEMS, item.id)
            metrics.CLAIMS.labels("work_item").inc(len(items))
            return len(items)
        source = self.registry.source(kind)
        if source is None:
            return 0
        claims = await source.claim(self.worker_id, limit, self.lease_s)
        for claim in claims:
            self._spawn(self._run_claim(claim), f"{claim.kind}-{claim.item_id}", kind)
        metrics.CLAIMS.labels(kind).inc(len(claims))
        return len(claims)

    async def flush_outbox(self) -> int:
        """Send what the outbox holds; returns how many reports the store acknowledged."""
        if self.outbox is None or not len(self.outbox):
            return 0
        sent = await self.outbox.flush(self._deliver, MAX_WORK_BATCH)
        if sent:
            log.info("outbox: %d reports delivered, %d left", sent, len(self.outbox))
        return sent

    async def _deliver(self, reports: list[WorkReport]) -> list[ReportAck]:
        acks = await self.store.work_report(reports)
        self.stats.count(acks)
        return acks

    def _spawn(
        self,
        work: Coroutine[Any, Any, None],
        name: str,
        kind: str,
        item_id: str | None = None,
    ) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        self._held[kind] += 1
        self._kind_of[task] = kind
        if item_id is not None:
            self._executing[item_id] = task
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        kind = self._kind_of.pop(task)
        self._held[kind] -= 1
        if not task.cancelled() and task.exception() is not None:
            log.error("work task %s crashed", task.get_name(), exc_info=task.exception())
        if self._refill(kind) or not self._tasks:
            self._wake.set()

    async def _run_item(self, item: WorkItem) -> None:
        try:
            async with self._semaphore:
                execution = await self.registry.execute(item, WorkContext(item, self.worker_id))
        finally:
            self._executing.pop(item.id, None)
        if execution.outcome == "completed":
            self.stats.completed += 1
        else:
            self.stats.failed += 1
            log.warning("work item %s (%s) failed: %s", item.id, item.operation, execution.error)
        report = WorkReport(
            item.id,
            self.worker_id,
            execution.outcome,
            uuid.uuid4().hex,
            execution.result,
            execution.error,
        )
        await self._submit(report)

    async def _run_claim(self, claim: Claim) -> None:
        await claim.run()  # bounded by its kind's limit when claimed
        self.stats.completed += 1

    async def _submit(self, report: WorkReport) -> None:
        """Returns once the report is with the store or in the outbox."""
        handled = asyncio.get_running_loop().create_future()
        self._reports.append((report, handled))
        self._unhandled += 1
        self._report_ready.set()
        await handled

    async def _report_loop(self) -> None:
        while True:
            await self._report_ready.wait()
            self._report_ready.clear()
            while self._reports:
                batch = self._reports[:MAX_WORK_BATCH]
                del self._reports[:MAX_WORK_BATCH]
                await self._handle_reports(batch)

    async def _handle_reports(self, batch: list[tuple[WorkReport, asyncio.Future[None]]]) -> None:
        reports = [report for report, _ in batch]
        problem: BaseException | None = None
        try:
            await self._deliver(reports)
        except Exception as exc:  # whatever went wrong, the outbox keeps the reports
            self._note_store_error(exc)
            problem = await self._to_outbox(reports, exc)
        self._unhandled -= len(batch)
        for _, handled in batch:
            if handled.done():
                continue
            if problem is None:
                handled.set_result(None)
            else:
                handled.set_exception(problem)

    async def _to_outbox(self, reports: list[WorkReport], cause: Exception) -> Exception | None:
        log.warning(
            "store did not take %d reports (%s); keeping them in the outbox", len(reports), cause
        )
        assert self.outbox is not None  # work items (and so reports) need an outbox
        try:
            await self.outbox.append(reports)
        except OutboxError as exc:
            log.critical("%s; stopping: these reports are lost with this process", exc)
            self._stop_for(exc)
            return exc
        self.stats.outboxed += len(reports)
        return None

    def _note_store_error(self, exc: BaseException) -> None:
        if isinstance(exc, StoreAuthError):
            log.critical("the store refused this worker's credentials: %s; claiming stopped", exc)
            self._stop_for(exc)

    def _stop_for(self, exc: BulkJobError) -> None:
        self._fatal = self._fatal or exc
        self.request_stop()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.renew_leases()
            except StoreUnavailable as exc:
                self._note_store_error(exc)
                log.warning("renewing leases failed: %s", exc)
            except BulkJobError as exc:  # never let one refused renewal end the loop
                self._note_store_error(exc)
                log.error("renewing leases refused: %s", exc)

    async def renew_leases(self) -> None:
        """Renew the leases of running work items; stop those whose lease was lost."""
        ids = list(self._executing)
        for start in range(0, len(ids), MAX_WORK_BATCH):
            batch = ids[start : start + MAX_WORK_BATCH]
            lost = await self.store.work_heartbeat(self.worker_id, batch, self.lease_s)
            for item_id in lost:
                task = self._executing.pop(item_id, None)
                if task is not None:
                    log.warning("lease on work item %s lost; stopping it", item_id)
                    self.stats.leases_lost += 1
                    task.cancel()

    def request_stop(self) -> None:
        """Stop claiming; `run` then lets running work finish within the grace period."""
        self._stopping = True
        self._wake.set()

    async def run(self, burst: bool = False) -> SchedulerStats:
        """Claim and run work until stopped; with burst=True, until none is left."""
        self._start_background()
        try:
            while not self._stopping:
                self._check_background()
                claimed, delay = await self._guarded_tick()
                if burst and self._idle(claimed, delay):
                    break
                await self._pause(claimed, delay)
        finally:
            await self._shutdown()
        if self._fatal is not None:
            raise self._fatal
        return self.stats

    def _start_background(self) -> None:
        """The reporter and the lease renewer; named, and checked by `run` every round."""
        if not self._background:
            self._background = [
                asyncio.create_task(self._report_loop(), name="worker-reports"),
                asyncio.create_task(self._heartbeat_loop(), name="worker-heartbeat"),
            ]

    async def aclose(self) -> None:
        """Stop as `run` stops: finish or release running work, hand over every report."""
        self.request_stop()
        await self._shutdown()

    def _check_background(self) -> None:
        for task in self._background:
            if task.done():
                raise RuntimeError(f"background task {task.get_name()} stopped") from (
                    None if task.cancelled() else task.exception()
                )

    def _idle(self, claimed: int, delay: float | None) -> bool:
        waiting = len(self.outbox) if self.outbox is not None else 0
        quiet = self._tick_started_idle and not self._tasks
        return not claimed and delay is None and quiet and not waiting

    async def _guarded_tick(self) -> tuple[int, float | None]:
        """One tick; returns (items started, seconds to wait after a store error)."""
        try:
            claimed = await self.tick()
        except StoreAuthError as exc:
            self._note_store_error(exc)
            return 0, 0.0
        except RateLimited as exc:
            log.warning("store rate-limited this worker; waiting %d s", exc.retry_after_s)
            return 0, float(exc.retry_after_s)
        except StoreUnavailable as exc:
            self._failures += 1
            delay = backoff(self._failures)
            log.warning("store unavailable (%s); retrying in %.2f s", exc, delay)
            return 0, delay
        except BulkJobError as exc:
            # Refused for good (a report the store rejects, say): keep running, back off,
            # and say so loudly; the outbox keeps what was not acknowledged.
            self._failures += 1
            delay = backoff(self._failures)
            log.error("store refused the worker (%s); retrying in %.2f s", exc, delay)
            return 0, delay
        self._failures = 0
        return claimed, None

    async def _pause(self, claimed: int, delay: float | None) -> None:
        if delay is not None:
            await asyncio.sleep(delay)
            return
        if claimed and any(self._refill(kind) for kind in self._claimed_kinds):
            return  # there may be more work and there is room for it
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

    async def _shutdown(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.grace_s)
        await self._cancel_running()
        await self._drain_reports()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background = []
        with contextlib.suppress(Exception):  # best effort; the outbox keeps what is left
            await self.flush_outbox()

    async def _cancel_running(self) -> None:
        unfinished = list(self._executing)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if not unfinished:
            return
        try:
            for start in range(0, len(unfinished), MAX_WORK_BATCH):
                batch = unfinished[start : start + MAX_WORK_BATCH]
                await self.store.work_release(self.worker_id, batch)
            self.stats.released += len(unfinished)
            log.info("released %d unfinished work items", len(unfinished))
        except BulkJobError as exc:
            log.warning(
                "could not release %d items (%s); their leases will expire", len(unfinished), exc
            )

    async def _drain_reports(self) -> None:
        """Hand every report still queued to the store or the outbox before stopping."""
        reporter = self._background[0] if self._background else None
        while self._unhandled and reporter is not None and not reporter.done():
            self._report_ready.set()
            await asyncio.sleep(0.01)
        while self._reports:  # the reporter is gone: deliver here
            batch = self._reports[:MAX_WORK_BATCH]
            del self._reports[:MAX_WORK_BATCH]
            await self._handle_reports(batch)
