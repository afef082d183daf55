"""The one lease watch: run one claimed item's work while renewing its lease, and stop the
work when the lease is lost or the item was stopped (cancelled) meanwhile.

JobRunner (bulk jobs) and ContainerProcessor (container jobs) carry their items through it;
the Scheduler renews work-item leases in batches instead (one call for many items).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from src.services.errors import BulkJobError, Conflict, NotFound

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class LeaseWatch:
    #: Renews the lease and returns the item's status; Conflict or NotFound when it was lost.
    renew: Callable[[], Awaitable[str]]
    interval_s: float
    #: Statuses that stop the work (the item was cancelled while it ran).
    stop_on: Collection[str]
    #: Awaited before the work is stopped for one of `stop_on` (stop a container, say).
    on_stop: Callable[[], Awaitable[Any]] | None = None
    #: Names the item in log lines.
    label: str = "item"


async def run_under_lease(work: Coroutine[Any, Any, T], watch: LeaseWatch) -> T | None:
    """Run `work` while `watch` renews its lease; its result, or None when the watch stopped
    it. A cancellation of the caller itself (a worker shutting down) propagates."""
    task = asyncio.create_task(work, name=watch.label)
    watcher = asyncio.create_task(_watch(task, watch), name=f"lease {watch.label}")
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        return None
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _watch(work: asyncio.Task[Any], watch: LeaseWatch) -> None:
    while not work.done():
        await asyncio.sleep(watch.interval_s)
        try:
            status = await watch.renew()
        except (Conflict, NotFound):
            log.warning("lease on %s lost; stopping it", watch.label)
            work.cancel()
            return
        except BulkJobError as exc:  # the store hiccuped: the lease still has time
            log.warning("renewing the lease on %s failed (%s); retrying", watch.label, exc)
            continue
        if status in watch.stop_on:
            if watch.on_stop is not None:
                await watch.on_stop()
            work.cancel()
            return
