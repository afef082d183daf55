"""Contract suite for the work-item operations: LocalStore and ConvexStore alike."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from src.services.domain.work import MAX_WORK_BATCH, NewWorkItem, WorkReport
from src.services.errors import Conflict, InvalidInput
from src.services.store.base import Store, WorkStore


@pytest.fixture
def work(store: Store) -> WorkStore:
    return store


def new(*ids: str, operation: str = "noop", **extra: Any) -> list[NewWorkItem]:
    return [NewWorkItem(operation, {"id": item_id}, item_id, **extra) for item_id in ids]


def done(item_id: str, key: str, owner: str = "w1", **extra: Any) -> WorkReport:
    return WorkReport(item_id, owner, "completed", key, {"ok": item_id}, **extra)


async def test_enqueue_claim_in_order_each_once(work: WorkStore) -> None:
    assert await work.work_enqueue_batch(new("a", "b", "c")) == ["a", "b", "c"]
    first = await work.work_claim("w1", ["noop"], 2, 30)
    assert [item.id for item in first] == ["a", "b"]
    assert first[0].status == "running" and first[0].lease_owner == "w1"
    assert first[0].attempts == 1 and first[0].payload == {"id": "a"}
    assert [item.id for item in await work.work_claim("w2", None, 10, 30)] == ["c"]
    assert await work.work_claim("w3", None, 10, 30) == []


async def test_random_ids_and_duplicate_ids(work: WorkStore) -> None:
    ids = await work.work_enqueue_batch([NewWorkItem("noop", None), NewWorkItem("noop", [1])])
    assert len(set(ids)) == 2
    with pytest.raises(Conflict):
        await work.work_enqueue_batch(new("x", ids[0]))
    assert await work.work_get("x") is None
    # The same batch again (a retry after a lost reply) is accepted and adds nothing.
    again = [NewWorkItem("noop", None, ids[0]), NewWorkItem("noop", [1], ids[1])]
    assert await work.work_enqueue_batch(again) == ids
    assert (await work.work_count_by_status())["pending"] == 2


async def test_claims_only_the_operations_asked_for(work: WorkStore) -> None:
    await work.work_enqueue_batch(new("a", operation="x") + new("b", operation="y"))
    assert await work.work_claim("w1", [], 10, 30) == []
    assert [item.id for item in await work.work_claim("w1", ["y"], 10, 30)] == ["b"]


async def test_expired_lease_is_claimable_and_a_poison_item_fails(work: WorkStore) -> None:
    await work.work_enqueue_batch(new("a", max_attempts=2))
    await work.work_claim("w1", None, 10, 0.2)
    assert await work.work_claim("w2", None, 10, 0.2) == []
    await asyncio.sleep(0.4)
    again = await work.work_claim("w2", None, 10, 0.2)
    assert [(item.id, item.attempts, item.lease_owner) for item in again] == [("a", 2, "w2")]
    await asyncio.sleep(0.4)
    assert await work.work_claim("w3", None, 10, 0.2) == []
    failed = await work.work_get("a")
    assert failed is not None and failed.status == "failed"
    assert failed.error is not None and "given up after 2 attempts" in failed.error


async def test_heartbeat_keeps_held_leases_and_names_lost_ones(work: WorkStore) -> None:
    await work.work_enqueue_batch(new("a", "b"))
    await work.work_claim("w1", None, 10, 0.5)
    for _ in range(3):
        await asyncio.sleep(0.3)
        assert await work.work_heartbeat("w1", ["a", "missing"], 0.5) == ["missing"]
    assert [item.id for item in await work.work_claim("w2", None, 10, 0.5)] == ["b"]
    assert await work.work_heartbeat("w1", ["b"], 0.5) == ["b"]


async def test_report_is_applied_once(work: WorkStore) -> None:
    await work.work_enqueue_batch(new("a"))
    await work.work_claim("w1", None, 10, 30)
    acks = await work.work_report([done("a", "k1"), done("a", "k1"), done("a", "k2")])
    assert [ack.state for ack in acks] == ["applied", "duplicate", "stale"]
    assert [ack.state for ack in await work.work_report([done("zz", "k3")])] == ["missing"]
    item = await work.work_get("a")
    assert item is not None
    assert (item.status, item.result, item.lease_owner) == ("completed", {"ok": "a"}, None)
    assert item.completed_at is not None


async def test_failure_is_recorded_with_its_error(work: WorkStore) -> None:
    await work.work_enqueue_batch(new("a"))
    await work.work_claim("w1", None, 10, 30)
    report = WorkReport("a", "w1", "failed", "k", None, "ValueError: bad")
    assert [ack.state for ack in await work.work_report([report])] == ["applied"]
    item = await work.work_get("a")
    assert item is not None and (item.status, item.error) == ("failed", "ValueError: bad")


async def test_late_report_of_an_expired_lease_still_applies_once(work: WorkStore) -> None:
    await work.work_enqueue_batch(new("a"))
    await work.work_claim("w1", None, 10, 0.1)
    await asyncio.sleep(0.3)
    await work.work_claim("w2", None, 10, 30)
    acks = await work.work_report([done("a", "from-w1", owner="w1")])
    assert [ack.state for ack in acks] == ["applied"]
    assert [ack.state for ack in await work.work_report([done("a", "from-w2", "w2")])] == ["stale"]
    assert await work.work_heartbeat("w2", ["a"], 30) == ["a"]


async def test_release_hands_back_without_using_an_attempt(work: WorkStore) -> None:
    await work.work_enqueue_batch(new("a"))
    await work.work_claim("w1", None, 10, 30)
    await work.work_release("someone-else", ["a"])
    assert await work.work_claim("w2", None, 10, 30) == []
    await work.work_release("w1", ["a"])
    assert [item.attempts for item in await work.work_claim("w2", None, 10, 30)] == [1]


async def test_counts_and_leases_by_owner_prefix(work: WorkStore) -> None:
    await work.work_enqueue_batch(new("a", "b", "c"))
    await work.work_claim("host_1/p1", None, 1, 30)
    await work.work_claim("hostX1/p2", None, 1, 30)
    assert await work.work_count_by_status() == {"pending": 1, "running": 2}
    held = await work.work_list_leases("host_1/")
    assert [item.id for item in held] == ["a"]


async def test_batches_are_bounded(work: WorkStore) -> None:
    with pytest.raises(InvalidInput):
        await work.work_enqueue_batch(new(*(f"i{n}" for n in range(MAX_WORK_BATCH + 1))))
    ids = [f"i{n}" for n in range(MAX_WORK_BATCH)]
    assert await work.work_enqueue_batch(new(*ids)) == ids
    claimed = await work.work_claim("w1", None, MAX_WORK_BATCH + 50, 30)
    assert len(claimed) == MAX_WORK_BATCH


async def test_a_backlog_of_other_operations_does_not_hide_an_item(work: WorkStore) -> None:
    for start in range(0, 1400, MAX_WORK_BATCH):
        await work.work_enqueue_batch(
            [NewWorkItem("transcode", {"n": n}) for n in range(start, start + MAX_WORK_BATCH)]
        )
    await work.work_enqueue_batch([NewWorkItem("echo", {"n": 1}, "mine")])
    claimed = await work.work_claim("w", ["echo"], 10, 30)
    assert [item.id for item in claimed] == ["mine"]
