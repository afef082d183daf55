"""Live job changes for the dashboard's event streams, read from the store's state.

A watch polls the store for one scope (a user's newest jobs, or one job), so changes made by
another process (`bulkjobs worker`) or through Convex are seen; the manager's `on_job_event`
hook wakes every watch at once for changes made in this process. Watches of the same scope
are shared by all their subscribers, and each subscriber keeps only the latest state of each
changed job, so a slow client never makes the server queue more than one payload per job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal

from src.services.domain import ACTIVE_JOB_STATUSES, BulkJobStatus, Job
from src.services.errors import BulkJobError
from src.services.reports import job_report
from src.services.store.base import MAX_PAGE, Store

log = logging.getLogger(__name__)

#: Fields left out of list events: job_data and results may be large; the job's own stream
#: and GET /bulk-jobs/{id} carry them.
LIST_EXCLUDE = frozenset({"job_data", "results"})

Fetch = Callable[[Store], Awaitable[list[Job]]]
EventKind = Literal["snapshot", "job", "heartbeat"]


@dataclass(frozen=True)
class JobEvent:
    kind: EventKind
    #: snapshot: {"jobs": [...]} (newest first); job: one job report; heartbeat: None.
    data: Any = None


def fingerprint(job: Job) -> tuple[Any, ...]:
    """What a viewer sees of a job; progress writes do not move updated_at, so stages count."""
    stages = tuple(
        (s.status, s.progress, s.items_total, s.items_completed, s.items_failed, s.error_message)
        for s in job.stages
    )
    exports = tuple(export.id for export in job.exports)
    return (job.status, job.updated_at, job.error_message, stages, exports)


def job_payload(job: Job, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    payload: dict[str, Any] = job_report(job).model_dump(mode="json", exclude=set(exclude))
    return payload


@dataclass(eq=False)
class Subscriber:
    """One stream's view: the jobs changed since it last took them, latest state only."""

    changed: dict[str, dict[str, Any]] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, job_id: str, payload: dict[str, Any]) -> None:
        self.changed.pop(job_id, None)  # re-inserted last: events keep the order of changes
        self.changed[job_id] = payload
        self.wake.set()

    def take(self) -> list[dict[str, Any]]:
        taken = list(self.changed.values())
        self.changed.clear()
        self.wake.clear()
        return taken


class Watch:
    """Polls one scope of the store and offers each changed job to every subscriber."""

    def __init__(self, hub: JobEventHub, key: str, fetch: Fetch, exclude: frozenset[str]) -> None:
        self.hub, self.key, self.fetch, self.exclude = hub, key, fetch, exclude
        self.subscribers: set[Subscriber] = set()
        #: job id -> (fingerprint, payload), in the order of the last fetch (newest first).
        self.state: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self.ready = asyncio.Event()
        self.poke = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def snapshot(self) -> list[dict[str, Any]]:
        return [payload for _, payload in self.state.values()]

    async def poll(self) -> bool:
        """Fetch once and offer what changed; True when a watched job is still running."""
        jobs = await self.fetch(await self.hub.store())
        state = {}
        for job in jobs:
            seen = self.state.get(job.id)
            mark = fingerprint(job)
            if seen is None or seen[0] != mark:
                seen = (mark, job_payload(job, self.exclude))
                if self.ready.is_set():
                    for subscriber in self.subscribers:
                        subscriber.offer(job.id, seen[1])
            state[job.id] = seen
        self.state = state
        return any(_is_live(job) for job in jobs)

    async def run(self) -> None:
        while True:
            live = await self._poll_safely()
            self.ready.set()
            interval = self.hub.poll_interval_s if live else self.hub.idle_interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.poke.wait(), interval)
            self.poke.clear()
            # Several hook calls in a burst cost one poll, not one each.
            await asyncio.sleep(self.hub.min_interval_s)

    def ended(self, task: asyncio.Task[None]) -> None:
        """A watch that died ends its streams (clients reconnect to a new one), loudly."""
        if not task.cancelled() and task.exception() is not None:
            log.error("event watch %s died", self.key, exc_info=task.exception())
        self.hub.forget(self)
        self.ready.set()
        for subscriber in self.subscribers:
            subscriber.wake.set()

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    async def _poll_safely(self) -> bool:
        try:
            return await self.poll()
        except BulkJobError:
            log.warning("event watch %s could not read the store; retrying", self.key)
            return True


def _is_live(job: Job) -> bool:
    return job.status == BulkJobStatus.PENDING or job.status in ACTIVE_JOB_STATUSES


class JobEventHub:
    """The event streams of one app: shared watches, a wake-up hook and a clean shutdown."""

    def __init__(
        self,
        store: Callable[[], Awaitable[Store]],
        poll_interval_s: float = 0.4,
        idle_interval_s: float = 2.0,
        heartbeat_s: float = 15.0,
        min_interval_s: float = 0.05,
    ) -> None:
        self.store = store
        self.poll_interval_s = poll_interval_s
        self.idle_interval_s = idle_interval_s
        self.heartbeat_s = heartbeat_s
        self.min_interval_s = min_interval_s
        self.closing = asyncio.Event()
        self._watches: dict[str, Watch] = {}
        self._restore_signals: Callable[[], None] = _nothing

    async def on_job_event(self, job_id: str, event: str) -> None:
        """The manager's hook: the watches that show this job look at the store now rather
        than at the next poll (a new job may belong to any user's list: all look)."""
        self.notify(None if event == "created" else job_id)

    def notify(self, job_id: str | None = None) -> None:
        """Wake the watches showing `job_id` (every watch when None)."""
        for key, watch in self._watches.items():
            if job_id is None or key == f"job:{job_id}" or job_id in watch.state:
                watch.poke.set()

    def user_events(self, user_id: str) -> AsyncGenerator[JobEvent, None]:
        """The user's newest MAX_PAGE jobs: a snapshot, then each change (without job_data)."""

        async def fetch(store: Store) -> list[Job]:
            return await store.get_user_jobs(user_id, limit=MAX_PAGE)

        return self._events(f"user:{user_id}", fetch, LIST_EXCLUDE)

    def job_events(self, job_id: str) -> AsyncGenerator[JobEvent, None]:
        """One job: a snapshot of it, then each change."""

        async def fetch(store: Store) -> list[Job]:
            job = await store.get_job(job_id)
            return [] if job is None else [job]

        return self._events(f"job:{job_id}", fetch, frozenset())

    async def _events(
        self, key: str, fetch: Fetch, exclude: frozenset[str]
    ) -> AsyncGenerator[JobEvent, None]:
        watch = self._watch(key, fetch, exclude)
        subscriber = Subscriber()
        watch.subscribers.add(subscriber)
        try:
            await self._until(watch.ready.wait())
            if self.closing.is_set() or not watch.alive:
                return
            # The snapshot holds every change offered so far: drop them, with no await between.
            subscriber.take()
            yield JobEvent("snapshot", {"jobs": watch.snapshot()})
            while not self.closing.is_set() and watch.alive:
                if not await self._until(subscriber.wake.wait(), self.heartbeat_s):
                    yield JobEvent("heartbeat")
                for payload in subscriber.take():
                    yield JobEvent("job", payload)
        finally:
            watch.subscribers.discard(subscriber)
            self._drop_if_unused(watch)

    async def _until(self, waiting: Awaitable[Any], timeout_s: float | None = None) -> bool:
        """Wait for `waiting` or shutdown; False on timeout."""
        wanted = asyncio.ensure_future(waiting)
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            done, _ = await asyncio.wait(
                {wanted, closing}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (wanted, closing):
                task.cancel()
        return bool(done)

    def _watch(self, key: str, fetch: Fetch, exclude: frozenset[str]) -> Watch:
        watch = self._watches.get(key)
        if watch is None:
            watch = self._watches[key] = Watch(self, key, fetch, exclude)
            watch.task = asyncio.create_task(watch.run(), name=f"events-{key}")
            watch.task.add_done_callback(watch.ended)
        return watch

    def forget(self, watch: Watch) -> None:
        if self._watches.get(watch.key) is watch:
            del self._watches[watch.key]

    def _drop_if_unused(self, watch: Watch) -> None:
        if not watch.subscribers:
            self.forget(watch)
            if watch.task is not None:
                # Not awaited: this runs while the stream itself is being cancelled.
                watch.task.cancel()

    def start(self) -> None:
        """Open for streams; in the main thread, end them as soon as SIGINT/SIGTERM arrive.

        uvicorn waits for open responses before it runs the lifespan's shutdown, and an event
        stream never ends by itself: without the signal hook, stopping the server would hang
        until every browser tab closed. The server's own handler still runs after ours.
        """
        self.closing.clear()
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handle(signum: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self.closing.set)
            chained = previous[signal.Signals(signum)]
            if callable(chained):
                chained(signum, frame)
            elif chained == signal.SIG_DFL:
                # Nobody else handles it: do what the signal would have done (end the
                # process), after the streams were told to close.
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)

        for sig in previous:
            signal.signal(sig, handle)
        self._restore_signals = lambda: _restore(previous, handle)

    async def aclose(self) -> None:
        """End every stream, stop every watch and give the signals back."""
        self.closing.set()
        self._restore_signals()
        self._restore_signals = _nothing
        watches = list(self._watches.values())
        self._watches.clear()
        for watch in watches:
            await _cancel(watch.task)


def _restore(previous: dict[signal.Signals, Any], ours: Callable[..., None]) -> None:
    for sig, handler in previous.items():
        if signal.getsignal(sig) is ours:
            signal.signal(sig, handler)


def _nothing() -> None:
    pass


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
