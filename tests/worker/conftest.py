"""Fixtures for the worker tests: the embedded store, an outbox, a store wrapper that injects
faults, and helpers to build schedulers and enqueue items."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from src.services.domain.work import MAX_WORK_BATCH, NewWorkItem, WorkItem
from src.services.store.base import WorkStore
from src.services.store.local import LocalStore
from src.services.worker.outbox import Outbox
from src.services.worker.registry import OperationRegistry, WorkContext
from src.services.worker.scheduler import Scheduler


class FaultyStore:
    """A WorkStore that passes calls through, except those told to fail.

    `faults[name]` is a list of exceptions raised by the next calls of `name`, one per call;
    `down` makes every call raise StoreUnavailable-like `down` itself.
    """

    def __init__(self, inner: WorkStore) -> None:
        self.inner = inner
        self.faults: dict[str, list[BaseException]] = {}
        self.down: BaseException | None = None
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def fail(self, name: str, *errors: BaseException) -> None:
        self.faults.setdefault(name, []).extend(errors)

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args))
            if self.down is not None:
                raise self.down
            pending = self.faults.get(name)
            if pending:
                raise pending.pop(0)
            return await target(*args, **kwargs)

        return call

    def count(self, name: str) -> int:
        return sum(1 for called, _ in self.calls if called == name)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    async with LocalStore(tmp_path / "work.db") as opened:
        yield opened


@pytest.fixture
def faulty(store: LocalStore) -> FaultyStore:
    return FaultyStore(store)  # type: ignore[arg-type]  # FaultyStore forwards to a real store


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    async with Outbox(tmp_path / "outbox.jsonl") as opened:
        yield opened


async def echo(payload: Any, ctx: WorkContext) -> Any:
    return {"echo": payload}


@pytest.fixture
def registry() -> OperationRegistry:
    registry = OperationRegistry()
    registry.register("echo", echo)
    return registry


@pytest.fixture
def make_scheduler(
    faulty: FaultyStore, registry: OperationRegistry, outbox: Outbox
) -> Callable[..., Scheduler]:
    def make(**options: Any) -> Scheduler:
        values: dict[str, Any] = {
            "worker_id": "w1",
            "operations": None,
            "claim_batch_size": 10,
            "max_concurrency": 10,
            "store": faulty,
            "registry": registry,
            "outbox": outbox,
            "lease_s": 5.0,
            "poll_interval_s": 0.02,
            "grace_s": 2.0,
        }
        return Scheduler(**(values | options))

    return make


async def enqueue(
    store: WorkStore, count: int, operation: str = "echo", payload: Callable[[int], Any] = dict
) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, MAX_WORK_BATCH):
        items = [
            NewWorkItem(operation, payload(n) if payload is not dict else {"n": n}, f"i{n:05}")
            for n in range(start, min(count, start + MAX_WORK_BATCH))
        ]
        ids += await store.work_enqueue_batch(items)
    return ids


async def items(store: WorkStore, ids: list[str]) -> list[WorkItem]:
    found = [await store.work_get(item_id) for item_id in ids]
    assert all(item is not None for item in found)
    return [item for item in found if item is not None]


async def wait_idle(scheduler: Scheduler) -> None:
    while scheduler._tasks:
        await asyncio.gather(*scheduler._tasks, return_exceptions=True)
