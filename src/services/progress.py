"""Coalescing progress writer: processors may report every item, the store sees a few writes.

A stage's progress reaches the store at most once per interval; values reported in between
are merged (counts kept monotonic, progress clamped to [0, 1]) and written by a timer when
the interval ends, so the last value always lands. Completing or failing a stage discards
what is pending, because that final write carries the final values.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from src.services.domain import BulkJobStatus
from src.services.errors import JobCancelled
from src.services.store.base import Store

log = logging.getLogger(__name__)

Key = tuple[str, str]


@dataclass(slots=True)
class _Pending:
    progress: float = 0.0
    items_completed: int = 0
    items_failed: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    dirty: bool = False
    last_write: float = -math.inf
    timer: asyncio.TimerHandle | None = None
    status: BulkJobStatus = BulkJobStatus.PROCESSING


def clamp_progress(value: float) -> float:
    if math.isnan(value):
        return 0.0
    return min(1.0, max(0.0, value))


class ProgressWriter:
    """Per-(job, stage) coalescing of update_stage_progress calls."""

    def __init__(
        self, store: Store, interval_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._interval = interval_s
        self._clock = clock
        self._pending: dict[Key, _Pending] = {}
        self._flushes: set[asyncio.Task[None]] = set()
        #: Store writes made, for benchmarks and metrics.
        self.writes = 0
        self._last_job: str | None = None
        self._last_stage: str | None = None
        self._last_state: _Pending | None = None

    async def report(
        self,
        job_id: str,
        stage: str,
        progress: float,
        items_completed: int | None = None,
        items_failed: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> BulkJobStatus:
        """Record a progress value; returns the job status seen at the last write."""
        status = self.offer(job_id, stage, progress, items_completed, items_failed, metadata)
        return status if status is not None else await self.write_now(job_id, stage)

    def offer(
        self,
        job_id: str,
        stage: str,
        progress: float,
        items_completed: int | None = None,
        items_failed: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> BulkJobStatus | None:
        """Merge a value without awaiting: the last status seen, or None if a write is due.

        This is the hot path (a processor may call it for every item), so it stays inline.
        """
        state = self._last_state
        if job_id is not self._last_job or stage is not self._last_stage or state is None:
            state = self._state(job_id, stage)
        if progress != progress:  # NaN
            progress = 0.0
        state.progress = 1.0 if progress > 1.0 else (0.0 if progress < 0.0 else progress)
        if items_completed is not None and items_completed > state.items_completed:
            state.items_completed = items_completed
        if items_failed is not None and items_failed > state.items_failed:
            state.items_failed = items_failed
        if metadata:
            state.metadata.update(metadata)
        state.dirty = True
        if state.timer is not None:  # a flush is already due at the interval's end
            return state.status
        if self._clock() - state.last_write >= self._interval:
            return None
        self._schedule((job_id, stage), state)
        return state.status

    def _state(self, job_id: str, stage: str) -> _Pending:
        """The stage's pending state, remembered as the last one used (the common repeat)."""
        key = (job_id, stage)
        state = self._pending.get(key)
        if state is None:
            state = self._pending[key] = _Pending()
        self._last_job, self._last_stage, self._last_state = job_id, stage, state
        return state

    def started(self, job_id: str, stage: str) -> None:
        """The stage was just started, a store write of its own: it opens the first interval,
        so the processor's first reports coalesce instead of each stage waiting on a write
        (one round trip per stage, 50 ms to a deployment in another region)."""
        state = self._state(job_id, stage)
        state.last_write = max(state.last_write, self._clock())

    async def write_metadata(
        self, job_id: str, stage: str, metadata: dict[str, Any]
    ) -> BulkJobStatus:
        """Merge `metadata` into the stage's value and write it now, with the progress and
        counts reported so far (a record that must not wait for the interval)."""
        state = self._state(job_id, stage)
        state.metadata.update(metadata)
        await self._write((job_id, stage), state)
        return state.status

    async def write_now(self, job_id: str, stage: str) -> BulkJobStatus:
        """Write the stage's merged value now; returns the job status."""
        state = self._pending[(job_id, stage)]
        await self._write((job_id, stage), state)
        return state.status

    async def _write(self, key: Key, state: _Pending) -> None:
        state.dirty = False
        state.last_write = self._clock()
        metadata, state.metadata = state.metadata, {}
        self.writes += 1
        state.status = await self._store.update_stage_progress(
            key[0],
            key[1],
            state.progress,
            items_completed=state.items_completed,
            items_failed=state.items_failed,
            metadata=metadata or None,
        )

    def _schedule(self, key: Key, state: _Pending) -> None:
        delay = max(0.0, state.last_write + self._interval - self._clock())
        loop = asyncio.get_running_loop()
        state.timer = loop.call_later(delay, self._start_flush, key)

    def _start_flush(self, key: Key) -> None:
        task = asyncio.get_running_loop().create_task(self._timed_flush(key))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _timed_flush(self, key: Key) -> None:
        state = self._pending.get(key)
        if state is None:
            return
        state.timer = None
        try:
            await self.flush(*key)
        except Exception:
            # The next report or the stage's completion carries the value again.
            log.warning("progress flush for %s/%s failed", *key, exc_info=True)
            state.dirty = True

    async def flush(self, job_id: str, stage: str) -> None:
        """Write the pending value of a stage now, if there is one."""
        state = self._pending.get((job_id, stage))
        if state is not None and state.dirty:
            await self._write((job_id, stage), state)

    async def update(
        self,
        job_id: str,
        stage: str,
        progress: float,
        items_completed: int | None = None,
        items_failed: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Report progress (coalesced); raises JobCancelled once the job was cancelled."""
        status = await self.report(job_id, stage, progress, items_completed, items_failed, metadata)
        if status is BulkJobStatus.CANCELLED:
            raise JobCancelled(f"job {job_id} was cancelled")

    async def complete_stage(
        self,
        job_id: str,
        stage: str,
        items_completed: int | None = None,
        items_failed: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> tuple[int | None, int | None]:
        """Complete the stage in one write that supersedes what is pending, with the counts
        and metadata reported here unless given (None: the store keeps the counts it has);
        returns the (completed, failed) counts written."""
        reported = self.counts(job_id, stage)
        merged = {**self.unsent_metadata(job_id, stage), **(metadata or {})} or None
        self.discard(job_id, stage)
        if reported is not None:
            items_completed = reported[0] if items_completed is None else items_completed
            items_failed = reported[1] if items_failed is None else items_failed
        await self._store.complete_stage(job_id, stage, items_completed, items_failed, merged)
        return items_completed, items_failed

    async def fail_stage(
        self,
        job_id: str,
        stage: str,
        error_message: str,
        metadata: dict[str, Any] | None = None,
        fatal: bool = True,
    ) -> None:
        """Write what is pending (the counts reached), then fail the stage (and, when
        `fatal`, the job: the store's rule)."""
        await self.flush(job_id, stage)
        self.discard(job_id, stage)
        await self._store.fail_stage(job_id, stage, error_message, metadata, fatal)

    def counts(self, job_id: str, stage: str) -> tuple[int, int] | None:
        """The highest (completed, failed) counts reported so far for a stage."""
        state = self._pending.get((job_id, stage))
        return None if state is None else (state.items_completed, state.items_failed)

    def unsent_metadata(self, job_id: str, stage: str) -> dict[str, Any]:
        """Metadata reported for a stage since its last write (its completion carries it)."""
        state = self._pending.get((job_id, stage))
        return {} if state is None else dict(state.metadata)

    def discard(self, job_id: str, stage: str) -> None:
        """Forget a stage's pending value; its final write supersedes it."""
        state = self._pending.pop((job_id, stage), None)
        if state is self._last_state:
            self._last_state = None
        if state is not None and state.timer is not None:
            state.timer.cancel()

    def discard_job(self, job_id: str) -> None:
        for key in [key for key in self._pending if key[0] == job_id]:
            self.discard(*key)

    async def aclose(self) -> None:
        """Flush everything pending, then stop the timers."""
        for key in list(self._pending):
            try:
                await self.flush(*key)
            except Exception:
                log.warning("final progress flush for %s/%s failed", *key, exc_info=True)
            self.discard(*key)
        for task in list(self._flushes):
            task.cancel()
