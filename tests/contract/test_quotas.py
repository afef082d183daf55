"""Contract suite for the per-user quotas the stores count: bytes of unexpired exports
(add_export) and unfinished container jobs (container_create*), on both stores."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from src.services.domain.containers import ContainerQuota
from src.services.errors import ContainerQuotaExceeded, ExportQuotaExceeded
from src.services.store.base import Store
from tests.contract.test_container_store import host, job
from tests.contract.test_store import LIMIT, make_export, new_job

SIZE = 12  # make_export's size_bytes


async def test_export_quota_counts_the_users_unexpired_exports(store: Store) -> None:
    job_id = await store.create(new_job(), LIMIT)
    other = await store.create(new_job(user="u2"), LIMIT)
    await store.add_export(make_export(job_id, "e1"), max_user_bytes=3 * SIZE)
    await store.add_export(make_export(job_id, "e2"), max_user_bytes=3 * SIZE)
    await store.add_export(make_export(job_id, "gone", expires_in_s=-5))  # expired: not held
    theirs = make_export(other, "theirs").model_copy(update={"user_id": "u2"})
    await store.add_export(theirs, max_user_bytes=SIZE)
    assert await store.get_user_export_bytes("u1") == 2 * SIZE
    await store.add_export(make_export(job_id, "e3"), max_user_bytes=3 * SIZE)
    with pytest.raises(ExportQuotaExceeded) as refused:
        await store.add_export(make_export(job_id, "e4"), max_user_bytes=3 * SIZE)
    assert (refused.value.maximum, refused.value.usage, refused.value.requested) == (
        3 * SIZE,
        3 * SIZE,
        SIZE,
    )
    assert refused.value.user_id == "u1"
    assert "BULKJOBS_USER_MAX_EXPORT_BYTES" in str(refused.value)
    assert await store.get_export("e4") is None
    await store.add_export(make_export(job_id, "e4"))  # no quota given: not counted
    assert await store.get_user_export_bytes("u1") == 4 * SIZE


async def test_export_quota_counts_a_replaced_record_once(store: Store) -> None:
    job_id = await store.create(new_job(), LIMIT)
    await store.add_export(make_export(job_id, "fixed"), max_user_bytes=SIZE)
    await store.add_export(make_export(job_id, "fixed"), max_user_bytes=SIZE)
    assert await store.get_user_export_bytes("u1") == SIZE


async def test_concurrent_exports_cannot_pass_the_quota(store: Store) -> None:
    job_id = await store.create(new_job(), LIMIT)
    exports = [make_export(job_id, f"c{index}") for index in range(20)]
    results = await asyncio.gather(
        *(store.add_export(export, max_user_bytes=5 * SIZE) for export in exports),
        return_exceptions=True,
    )
    refused = [result for result in results if isinstance(result, ExportQuotaExceeded)]
    assert len(refused) == 15 and results.count(None) == 5
    assert await store.get_user_export_bytes("u1") == 5 * SIZE


def owned(user: str = "alice", **fields: Any) -> Any:
    return job(created_by=user, **fields)


async def test_unfinished_job_quota_refuses_the_batch_whole(store: Store) -> None:
    await store.host_create(host())
    quota = ContainerQuota(max_unfinished=3)
    await store.container_create_batch([owned(), owned()], quota)
    done = [owned(status=status) for status in ("completed", "failed", "cancelled", "timeout")]
    await store.container_create_batch(done)  # finished jobs hold nothing
    await store.container_create_batch([job(), owned("bob")], quota)
    batch = [owned(), owned()]
    with pytest.raises(ContainerQuotaExceeded) as refused:
        await store.container_create_batch(batch, quota)
    assert (refused.value.maximum, refused.value.usage, refused.value.requested) == (3, 2, 2)
    assert "BULKJOBS_USER_MAX_UNFINISHED_CONTAINER_JOBS" in str(refused.value)
    assert await store.container_get_many([j.id for j in batch]) == []
    await store.container_create(owned(), quota)
    with pytest.raises(ContainerQuotaExceeded):
        await store.container_create(owned(), quota)
    await store.container_create(owned())  # no quota given: not counted


async def test_unfinished_job_quota_checks_each_owner_of_a_batch(store: Store) -> None:
    await store.host_create(host())
    quota = ContainerQuota(max_unfinished=2)
    await store.container_create_batch([owned("bob"), owned("bob")], quota)
    mixed = [owned("alice"), owned("bob")]
    with pytest.raises(ContainerQuotaExceeded) as refused:
        await store.container_create_batch(mixed, quota)
    assert refused.value.user_id == "bob"
    assert await store.container_get_many([j.id for j in mixed]) == []


async def test_finishing_jobs_frees_room(store: Store) -> None:
    await store.host_create(host())
    quota = ContainerQuota(max_unfinished=1)
    first = owned()
    await store.container_create(first, quota)
    await store.container_transition(first.id, "cancelled")
    await store.container_create(owned(), quota)


async def test_a_reservation_holds_room_for_the_batches_that_follow(store: Store) -> None:
    await store.host_create(host())
    model = owned()
    ids = [uuid.uuid4().hex for _ in range(6)]
    hold = uuid.uuid4().hex
    first = ContainerQuota(max_unfinished=8, hold_id=hold, hold=4)
    rest = ContainerQuota(max_unfinished=8, hold_id=hold)
    await store.container_create_copies(model, ids[:2], first)
    # 2 written + 4 reserved: another creation has room for 2 only.
    with pytest.raises(ContainerQuotaExceeded) as refused:
        await store.container_create_copies(model, _ids(3), ContainerQuota(max_unfinished=8))
    assert refused.value.usage == 6
    await store.container_create_copies(model, ids[2:4], rest)
    await store.container_create_copies(model, ids[4:], rest)
    assert len(await store.container_get_many(ids)) == 6
    # The reservation is used up: the room left is the cap less the jobs.
    await store.container_create_copies(model, _ids(2), ContainerQuota(max_unfinished=8))
    with pytest.raises(ContainerQuotaExceeded):
        await store.container_create(owned(), ContainerQuota(max_unfinished=8))


async def test_a_reservation_cannot_be_taken_past_the_cap(store: Store) -> None:
    await store.host_create(host())
    await store.container_create_batch([owned(), owned()])
    with pytest.raises(ContainerQuotaExceeded) as refused:
        quota = ContainerQuota(max_unfinished=5, hold_id=uuid.uuid4().hex, hold=3)
        await store.container_create_copies(owned(), _ids(1), quota)
    assert (refused.value.usage, refused.value.requested) == (2, 4)


async def test_concurrent_creations_cannot_pass_the_quota(store: Store) -> None:
    await store.host_create(host())
    quota = ContainerQuota(max_unfinished=100)
    model = owned()
    results = await asyncio.gather(
        *(store.container_create_copies(model, _ids(10), quota) for _ in range(20)),
        return_exceptions=True,
    )
    assert results.count(None) == 10
    assert all(isinstance(r, ContainerQuotaExceeded) for r in results if r is not None)
    assert len(await store.container_list(created_by="alice", limit=1000)) == 100


def _ids(count: int) -> list[str]:
    return [uuid.uuid4().hex for _ in range(count)]
