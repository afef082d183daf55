"""The progress writer coalesces writes, keeps counts monotonic and always lands the last value."""

from __future__ import annotations

import asyncio
from typing import Any

from src.services.domain import BulkJobStatus
from src.services.progress import ProgressWriter


class RecordingStore:
    """Records update_stage_progress calls; the only store method the writer uses."""

    def __init__(self, status: BulkJobStatus = BulkJobStatus.PROCESSING) -> None:
        self.calls: list[dict[str, Any]] = []
        self.status = status

    async def update_stage_progress(
        self, job_id: str, stage: str, progress: float, **kw: Any
    ) -> BulkJobStatus:
        self.calls.append({"job_id": job_id, "stage": stage, "progress": progress, **kw})
        return self.status


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_reports_within_an_interval_make_one_write() -> None:
    store, clock = RecordingStore(), FakeClock()
    writer = ProgressWriter(store, interval_s=10, clock=clock)  # type: ignore[arg-type]  # a fake store with the one method used
    for i in range(1, 1001):
        await writer.report("j", "s", i / 1000, items_completed=i)
    assert len(store.calls) == 1
    assert writer.writes == 1
    await writer.flush("j", "s")
    assert store.calls[-1]["progress"] == 1.0
    assert store.calls[-1]["items_completed"] == 1000


async def test_next_interval_writes_again() -> None:
    store, clock = RecordingStore(), FakeClock()
    writer = ProgressWriter(store, interval_s=1, clock=clock)  # type: ignore[arg-type]  # a fake store with the one method used
    await writer.report("j", "s", 0.1, items_completed=1)
    clock.now = 1.5
    await writer.report("j", "s", 0.3, items_completed=3)
    assert [call["items_completed"] for call in store.calls] == [1, 3]
    await writer.report("j", "s", 0.4, items_completed=4)  # within the interval: waits
    assert len(store.calls) == 2
    writer.discard("j", "s")


async def test_timer_lands_the_last_value() -> None:
    store = RecordingStore()
    writer = ProgressWriter(store, interval_s=0.05)  # type: ignore[arg-type]  # a fake store with the one method used
    await writer.report("j", "s", 0.1, items_completed=1)
    await writer.report("j", "s", 0.9, items_completed=9, metadata={"k": 1})
    assert len(store.calls) == 1
    await asyncio.sleep(0.2)
    assert len(store.calls) == 2
    assert store.calls[-1]["items_completed"] == 9
    assert store.calls[-1]["metadata"] == {"k": 1}


async def test_counts_are_monotonic_and_progress_clamped() -> None:
    store, clock = RecordingStore(), FakeClock()
    writer = ProgressWriter(store, interval_s=0, clock=clock)  # type: ignore[arg-type]  # a fake store with the one method used
    await writer.report("j", "s", 5.0, items_completed=10, items_failed=3)
    await writer.report("j", "s", -2.0, items_completed=4, items_failed=1)
    await writer.report("j", "s", float("nan"))
    assert [call["progress"] for call in store.calls] == [1.0, 0.0, 0.0]
    assert {call["items_completed"] for call in store.calls} == {10}
    assert {call["items_failed"] for call in store.calls} == {3}


async def test_discard_cancels_the_pending_write() -> None:
    store = RecordingStore()
    writer = ProgressWriter(store, interval_s=0.05)  # type: ignore[arg-type]  # a fake store with the one method used
    await writer.report("j", "s", 0.1)
    await writer.report("j", "s", 0.2)
    writer.discard("j", "s")
    await asyncio.sleep(0.15)
    assert len(store.calls) == 1


async def test_status_from_the_store_is_returned() -> None:
    store = RecordingStore(BulkJobStatus.CANCELLED)
    writer = ProgressWriter(store, interval_s=0)  # type: ignore[arg-type]  # a fake store with the one method used
    assert await writer.report("j", "s", 0.5) == BulkJobStatus.CANCELLED


async def test_stages_are_coalesced_separately() -> None:
    store, clock = RecordingStore(), FakeClock()
    writer = ProgressWriter(store, interval_s=10, clock=clock)  # type: ignore[arg-type]  # a fake store with the one method used
    await writer.report("j", "a", 0.5)
    await writer.report("j", "b", 0.5)
    await writer.report("k", "a", 0.5)
    assert len(store.calls) == 3
    await writer.aclose()


async def test_a_started_stage_opens_the_first_interval() -> None:
    store, clock = RecordingStore(), FakeClock()
    writer = ProgressWriter(store, interval_s=1, clock=clock)  # type: ignore[arg-type]
    writer.started("j", "s")
    assert await writer.report("j", "s", 0.1, items_completed=1) == BulkJobStatus.PROCESSING
    assert store.calls == []  # the start was this interval's write; the timer lands this one
    clock.now = 1.5
    await writer.flush("j", "s")
    assert [call["items_completed"] for call in store.calls] == [1]
