"""The Scheduler on the embedded store: claiming, concurrency, failures, reports, the outbox,
store errors, leases and shutdown. Faults are injected with FaultyStore."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from src.config import Settings
from src.services.backoff import backoff
from src.services.domain.work import NewWorkItem, WorkReport
from src.services.errors import RateLimited, StoreAuthError, StoreUnavailable
from src.services.store.local import LocalStore
from src.services.worker.outbox import Outbox
from src.services.worker.registry import OperationRegistry, WorkContext
from src.services.worker.scheduler import Scheduler
from tests.worker.conftest import FaultyStore, enqueue, items, wait_idle

MakeScheduler = Callable[..., Scheduler]


async def test_tick_no_jobs(faulty: FaultyStore, make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler(operations=["echo"], claim_batch_size=7)
    assert await scheduler.tick() == 0
    assert faulty.calls == [("work_claim", ("w1", ["echo"], 7, 5.0))]
    await scheduler.aclose()


async def test_tick_with_jobs(store: LocalStore, make_scheduler: MakeScheduler) -> None:
    ids = await enqueue(store, 3)
    scheduler = make_scheduler()
    assert await scheduler.tick() == 3
    await wait_idle(scheduler)
    done = await items(store, ids)
    assert [(item.status, item.result) for item in done] == [
        ("completed", {"echo": {"n": n}}) for n in range(3)
    ]
    assert scheduler.stats.applied == 3
    await scheduler.aclose()


@pytest.mark.parametrize("limit", [1, 10, 100])
async def test_concurrency_never_above_the_limit(
    store: LocalStore, registry: OperationRegistry, make_scheduler: MakeScheduler, limit: int
) -> None:
    running = peak = 0

    async def track(payload: Any, ctx: WorkContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    registry.register("track", track)
    ids = await enqueue(store, max(3 * limit, 20), "track")
    scheduler = make_scheduler(max_concurrency=limit, claim_batch_size=200)
    await asyncio.wait_for(scheduler.run(burst=True), 30)
    assert peak == limit
    assert {item.status for item in await items(store, ids)} == {"completed"}


async def test_semaphore_released_when_an_operation_raises(
    store: LocalStore, registry: OperationRegistry, make_scheduler: MakeScheduler
) -> None:
    async def explode(payload: Any, ctx: WorkContext) -> None:
        raise RuntimeError("crash")

    registry.register("explode", explode)
    await store.work_enqueue_batch([NewWorkItem("explode", {"x": n}) for n in range(5)])
    later = await enqueue(store, 5)
    scheduler = make_scheduler(max_concurrency=1, claim_batch_size=1)
    await asyncio.wait_for(scheduler.run(burst=True), 10)
    assert scheduler._semaphore._value == 1
    assert {item.status for item in await items(store, later)} == {"completed"}
    assert (scheduler.stats.failed, scheduler.stats.completed) == (5, 5)


async def test_failure_is_reported(
    store: LocalStore, registry: OperationRegistry, make_scheduler: MakeScheduler
) -> None:
    async def refuse(payload: Any, ctx: WorkContext) -> None:
        raise ValueError(f"cannot do {payload['n']}")

    registry.register("refuse", refuse)
    ids = await enqueue(store, 1, "refuse")
    await asyncio.wait_for(make_scheduler().run(burst=True), 10)
    (item,) = await items(store, ids)
    assert (item.status, item.error, item.attempts) == ("failed", "ValueError: cannot do 0", 1)


async def test_report_failure_goes_to_the_outbox(
    store: LocalStore, faulty: FaultyStore, outbox: Outbox, make_scheduler: MakeScheduler
) -> None:
    ids = await enqueue(store, 3)
    faulty.fail("work_report", StoreUnavailable("network down"))
    scheduler = make_scheduler()
    await scheduler.tick()
    await wait_idle(scheduler)
    assert [entry.item_id for entry in outbox.entries()] == ids
    assert outbox.path.read_bytes().count(b"\n") == 3  # on disk, not only in memory
    assert {item.status for item in await items(store, ids)} == {"running"}
    assert scheduler.stats.outboxed == 3
    await scheduler.aclose()


async def test_flush_outbox_success(
    store: LocalStore, faulty: FaultyStore, outbox: Outbox, make_scheduler: MakeScheduler
) -> None:
    ids = await enqueue(store, 5)
    faulty.fail("work_report", StoreUnavailable("network down"))
    scheduler = make_scheduler()
    await scheduler.tick()
    await wait_idle(scheduler)
    assert len(outbox) == 5
    assert await scheduler.tick() == 0  # flushes first
    assert len(outbox) == 0 and outbox.path.read_bytes() == b""
    assert {item.status for item in await items(store, ids)} == {"completed"}
    assert scheduler.stats.applied == 5
    await scheduler.aclose()


async def test_flush_partial_failure_keeps_everything_unacknowledged(
    store: LocalStore, faulty: FaultyStore, outbox: Outbox, make_scheduler: MakeScheduler
) -> None:
    ids = await enqueue(store, 450)
    for _ in range(3):
        await store.work_claim("w1", None, 200, 30)
    await outbox.append([WorkReport(item_id, "w1", "completed", f"k-{item_id}") for item_id in ids])
    scheduler = make_scheduler()
    # the second batch of the flush fails: the first is removed, every later entry is kept
    faulty.faults["work_report"] = []
    original = faulty.__getattr__("work_report")
    calls = 0

    async def second_fails(reports: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise StoreUnavailable("lost mid-flush")
        return await original(reports)

    faulty.work_report = second_fails  # type: ignore[method-assign]  # a fault injected into one call
    with pytest.raises(StoreUnavailable):
        await scheduler.flush_outbox()
    kept = [entry.item_id for entry in outbox.entries()]
    assert kept == ids[200:]
    on_disk = Outbox(outbox.path.with_name("copy.jsonl"))
    on_disk.path.write_bytes(outbox.path.read_bytes())
    async with on_disk:
        assert [entry.item_id for entry in on_disk.entries()] == ids[200:]
    assert await scheduler.flush_outbox() == 250
    assert len(outbox) == 0
    assert {item.status for item in await items(store, ids)} == {"completed"}
    await scheduler.aclose()


async def test_restart_with_reports_in_the_outbox(
    store: LocalStore, faulty: FaultyStore, registry: OperationRegistry, tmp_path: Any
) -> None:
    ids = await enqueue(store, 20)
    path = tmp_path / "restart.jsonl"
    async with Outbox(path) as first_box:
        first = Scheduler("w-old", None, 50, 50, faulty, registry, first_box)  # type: ignore[arg-type]  # FaultyStore forwards to a real store
        faulty.fail("work_report", StoreUnavailable("down"))
        await first.tick()
        await wait_idle(first)
        faulty.down = StoreUnavailable("down")
        await first.aclose()  # cannot flush: the store is down
        faulty.down = None
        assert len(first_box) == 20
    async with Outbox(path) as second_box:
        assert len(second_box) == 20
        second = Scheduler("w-new", None, 50, 50, faulty, registry, second_box)  # type: ignore[arg-type]  # FaultyStore forwards to a real store
        await asyncio.wait_for(second.run(burst=True), 10)
        assert len(second_box) == 0
    done = await items(store, ids)
    assert {item.status for item in done} == {"completed"}
    assert second.stats.applied == 20 and second.stats.claimed == 0


async def test_rate_limited_waits_retry_after(
    faulty: FaultyStore, make_scheduler: MakeScheduler
) -> None:
    scheduler = make_scheduler()
    faulty.fail("work_claim", RateLimited(2))
    assert await scheduler._guarded_tick() == (0, 2.0)
    assert await scheduler._guarded_tick() == (0, None)
    await scheduler.aclose()


async def test_server_errors_back_off_with_jitter(
    store: LocalStore, faulty: FaultyStore, make_scheduler: MakeScheduler
) -> None:
    scheduler = make_scheduler()
    faulty.fail("work_claim", *(StoreUnavailable("HTTP 500") for _ in range(6)))
    delays = [(await scheduler._guarded_tick())[1] for _ in range(6)]
    assert all(
        delay is not None and 0 <= delay <= 0.1 * 2 ** (n + 1) for n, delay in enumerate(delays)
    )
    assert len(set(delays)) > 1  # jittered
    samples = [backoff(10) for _ in range(50)]
    assert max(samples) <= 30 and len(set(samples)) == 50
    # and a worker recovers once the store answers again
    assert await scheduler._guarded_tick() == (0, None)  # a success resets the backoff
    assert scheduler._failures == 0
    ids = await enqueue(store, 3)
    faulty.fail("work_claim", StoreUnavailable("HTTP 503"))
    await asyncio.wait_for(scheduler.run(burst=True), 10)
    assert {item.status for item in await items(store, ids)} == {"completed"}


async def test_auth_error_stops_claiming_and_logs_loudly(
    faulty: FaultyStore, make_scheduler: MakeScheduler, caplog: pytest.LogCaptureFixture
) -> None:
    faulty.fail("work_claim", StoreAuthError("HTTP 401"), StoreAuthError("HTTP 401"))
    scheduler = make_scheduler()
    with pytest.raises(StoreAuthError):
        await asyncio.wait_for(scheduler.run(), 5)
    assert faulty.count("work_claim") == 1
    assert any(r.levelno == logging.CRITICAL and "credentials" in r.message for r in caplog.records)


async def test_thousands_of_items(store: LocalStore, make_scheduler: MakeScheduler) -> None:
    ids = await enqueue(store, 1500)
    scheduler = make_scheduler(max_concurrency=50, claim_batch_size=100)
    stats = await asyncio.wait_for(scheduler.run(burst=True), 30)
    assert (stats.claimed, stats.completed, stats.applied) == (1500, 1500, 1500)
    assert await store.work_count_by_status() == {"completed": 1500}
    assert len(ids) == 1500


@pytest.mark.parametrize("batch", [1, 7, 200])
async def test_batch_sizes(store: LocalStore, make_scheduler: MakeScheduler, batch: int) -> None:
    await enqueue(store, 30)
    stats = await asyncio.wait_for(
        make_scheduler(claim_batch_size=batch, max_concurrency=10).run(burst=True), 10
    )
    assert stats.applied == 30


async def test_long_running_item_keeps_its_lease(
    store: LocalStore, registry: OperationRegistry, make_scheduler: MakeScheduler
) -> None:
    runs = 0
    started = asyncio.Event()

    async def slow(payload: Any, ctx: WorkContext) -> str:
        nonlocal runs
        runs += 1
        started.set()
        await asyncio.sleep(1.2)
        return "done"

    registry.register("slow", slow)
    (item_id,) = await enqueue(store, 1, "slow")
    holder = make_scheduler(lease_s=0.3)
    run = asyncio.create_task(holder.run(burst=True))
    await asyncio.wait_for(started.wait(), 5)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # well past several lease lengths
        assert await store.work_claim("thief", None, 10, 0.3) == []
        await asyncio.sleep(0.1)
    await asyncio.wait_for(run, 5)
    (item,) = await items(store, [item_id])
    assert (item.status, item.result, item.attempts, runs) == ("completed", "done", 1, 1)


async def test_lost_lease_stops_the_item(
    store: LocalStore, registry: OperationRegistry, make_scheduler: MakeScheduler
) -> None:
    stopped = asyncio.Event()

    async def forever(payload: Any, ctx: WorkContext) -> None:
        try:
            await asyncio.sleep(60)
        finally:
            stopped.set()

    registry.register("forever", forever)
    (item_id,) = await enqueue(store, 1, "forever")
    scheduler = make_scheduler(lease_s=0.3)
    await scheduler.tick()
    # someone else finished it meanwhile
    await store.work_report([WorkReport(item_id, "other", "completed", "k-other")])
    await asyncio.wait_for(stopped.wait(), 3)
    assert scheduler.stats.leases_lost == 1
    await scheduler.aclose()


class Resize(BaseModel):
    width: int
    height: int


async def test_unknown_empty_and_malformed_items_fail_once(
    store: LocalStore, registry: OperationRegistry, make_scheduler: MakeScheduler
) -> None:
    async def resize(payload: Resize, ctx: WorkContext) -> int:
        return payload.width * payload.height

    registry.register("resize", resize, payload=Resize)  # type: ignore[arg-type]  # FaultyStore forwards to a real store
    await store.work_enqueue_batch(
        [
            NewWorkItem("no-such-op", {"a": 1}, "unknown"),
            NewWorkItem("echo", None, "empty"),
            NewWorkItem("echo", {}, "empty-dict"),
            NewWorkItem("resize", {"width": "wide"}, "malformed"),
            NewWorkItem("resize", [1, 2], "not-an-object"),
            NewWorkItem("resize", {"width": 2, "height": 3}, "good"),
        ]
    )
    # A worker told to claim an operation it has no handler for fails those items clearly
    # (a worker left to its defaults claims only what it has handlers for).
    operations = ["echo", "resize", "no-such-op"]
    await asyncio.wait_for(make_scheduler(operations=operations).run(burst=True), 10)
    found = {
        item.id: item
        for item in await items(
            store, ["unknown", "empty", "empty-dict", "malformed", "not-an-object", "good"]
        )
    }
    assert found["good"].result == 6
    errors = {key: item.error or "" for key, item in found.items() if key != "good"}
    assert "unknown operation 'no-such-op'" in errors["unknown"]
    assert errors["empty"].startswith("empty payload") and errors["empty-dict"].startswith(
        "empty payload"
    )
    assert "malformed payload for 'resize'" in errors["malformed"]
    assert "width" in errors["malformed"] and "height" in errors["malformed"]
    assert "malformed payload" in errors["not-an-object"]
    for key in errors:
        assert (found[key].status, found[key].attempts) == ("failed", 1)
    assert await store.work_claim("again", None, 10, 5) == []  # never retried


async def test_result_that_is_not_json_fails_the_item(
    store: LocalStore, registry: OperationRegistry, make_scheduler: MakeScheduler
) -> None:
    async def odd(payload: Any, ctx: WorkContext) -> Any:
        return {1, 2}

    registry.register("odd", odd)
    ids = await enqueue(store, 1, "odd")
    await asyncio.wait_for(make_scheduler().run(burst=True), 10)
    (item,) = await items(store, ids)
    assert item.status == "failed" and "not JSON" in (item.error or "")


async def test_stop_lets_running_items_finish_then_releases_the_rest(
    store: LocalStore, registry: OperationRegistry, make_scheduler: MakeScheduler
) -> None:
    async def nap(payload: Any, ctx: WorkContext) -> str:
        await asyncio.sleep(payload["s"])
        return "woke"

    registry.register("nap", nap)
    await store.work_enqueue_batch(
        [NewWorkItem("nap", {"s": 0.2}, "short"), NewWorkItem("nap", {"s": 30}, "long")]
    )
    scheduler = make_scheduler(grace_s=0.6)
    run = asyncio.create_task(scheduler.run())
    await asyncio.sleep(0.1)
    scheduler.request_stop()
    started = time.monotonic()
    await asyncio.wait_for(run, 5)
    assert time.monotonic() - started < 2
    short, long = await items(store, ["short", "long"])
    assert (short.status, short.result) == ("completed", "woke")
    assert (long.status, long.attempts, long.lease_owner) == ("pending", 0, None)
    assert scheduler.stats.released == 1


async def test_application_enqueue_helper(
    store: LocalStore, settings: Settings, make_scheduler: MakeScheduler
) -> None:
    from src.services.bulk_job_manager import BulkJobManager
    from src.services.worker import enqueue as enqueue_one

    manager = BulkJobManager(settings, store)
    first = await enqueue_one("echo", {"n": 7}, item_id="fixed-id", manager=manager)
    again = await enqueue_one("echo", {"n": 7}, item_id="fixed-id", manager=manager)
    assert first == again == "fixed-id"  # a retried enqueue adds nothing
    scheduler = make_scheduler()
    assert await scheduler.tick() == 1
    await wait_idle(scheduler)
    (done,) = await items(store, [first])
    assert (done.status, done.result) == ("completed", {"echo": {"n": 7}})
    await scheduler.aclose()


async def test_a_default_worker_leaves_operations_it_cannot_run(
    store: LocalStore, make_scheduler: MakeScheduler
) -> None:
    """Another fleet's operation stays pending for that fleet instead of failing here."""
    await store.work_enqueue_batch([NewWorkItem("transcode", {"f": 1}, "theirs")])
    await asyncio.wait_for(make_scheduler().run(burst=True), 10)
    (item,) = await items(store, ["theirs"])
    assert item.status == "pending" and item.attempts == 0


async def test_results_are_stored_as_plain_json(
    store: LocalStore, registry: OperationRegistry, make_scheduler: MakeScheduler
) -> None:
    import datetime as dt

    async def stamp(payload: Any, ctx: WorkContext) -> Any:
        return {"at": dt.datetime(2026, 1, 2, tzinfo=dt.UTC), "nan": float("nan")}

    registry.register("stamp", stamp)
    await store.work_enqueue_batch([NewWorkItem("stamp", {"x": 1}, "s")])
    await asyncio.wait_for(make_scheduler().run(burst=True), 10)
    (item,) = await items(store, ["s"])
    assert item.result == {"at": "2026-01-02T00:00:00+00:00", "nan": None}


async def test_a_work_item_backlog_does_not_starve_sources(
    store: LocalStore, registry: OperationRegistry, make_scheduler: MakeScheduler
) -> None:
    from src.services.worker.registry import Claim

    asked: list[int] = []

    class Jobs:
        kind = "bulk_job"

        async def claim(self, owner: str, limit: int, lease_s: float) -> list[Claim]:
            asked.append(limit)
            return []

    registry.add_source(Jobs())
    await enqueue(store, 300)
    scheduler = make_scheduler(claim_batch_size=5, max_concurrency=1000)
    for _ in range(4):
        await scheduler.tick()
    assert asked  # claimed from at least once although work items alone fill every tick
    await scheduler.aclose()
