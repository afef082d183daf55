"""Contract suite for deleting finished jobs and for token lists, expiry and revocation:
LocalStore and ConvexStore alike."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

from src.services.auth import hash_token
from src.services.domain import TOKEN_ID_CHARS, BulkJobStatus, utcnow
from src.services.domain.containers import ContainerJob, ExecutorHost
from src.services.errors import Conflict, NotFound
from src.services.store.base import Store
from tests.contract.test_store import LIMIT, STAGES, make_export, new_job


def container_job(bulk_job_id: str, **fields: Any) -> ContainerJob:
    values: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "docker_image": "busybox",
        "host_id": "h1",
        "bulk_job_id": bulk_job_id,
    }
    return ContainerJob.model_validate(values | fields)


async def finished(store: Store, status: BulkJobStatus = BulkJobStatus.COMPLETED) -> str:
    job_id = await store.create(new_job(), LIMIT)
    await store.update_status(job_id, BulkJobStatus.PROCESSING)
    await store.start_stage(job_id, STAGES[0])
    await store.update_status(job_id, status, error_message="stopped")
    return job_id


async def delete_all(store: Store, job_id: str, limit: int = 100) -> list[Any]:
    steps = [await store.delete_job(job_id, limit)]
    while not steps[-1].done:
        steps.append(await store.delete_job(job_id, limit))
    return steps


async def test_deleting_a_finished_job_takes_its_stages_exports_and_container_jobs(
    store: Store,
) -> None:
    await store.host_create(ExecutorHost(id="h1", name="host-h1", executor_type="mock"))
    job_id = await finished(store)
    other = await finished(store)
    await store.add_export(make_export(job_id, "e-mine"))
    await store.add_export(make_export(other, "e-other"))
    mine = [container_job(job_id, status="completed") for _ in range(3)]
    theirs = container_job(other, status="completed")
    await store.container_create_batch([*mine, theirs])

    [step] = await delete_all(store, job_id)

    assert step.model_dump() == {"done": True, "container_jobs": 3, "stages": 2, "exports": 1}
    assert await store.get_job(job_id) is None
    assert await store.get_export("e-mine") is None
    assert await store.container_get_many([job.id for job in mine]) == []
    # Another job's records are untouched.
    assert await store.get_export("e-other") is not None
    assert [job.id for job in await store.container_get_many([theirs.id])] == [theirs.id]
    assert (await store.get_job(other)) is not None
    with pytest.raises(NotFound):
        await store.delete_job(job_id)


async def test_many_container_jobs_go_in_steps_the_job_last(store: Store) -> None:
    await store.host_create(ExecutorHost(id="h1", name="host-h1", executor_type="mock"))
    job_id = await finished(store, BulkJobStatus.FAILED)
    await store.container_create_batch([container_job(job_id, status="failed") for _ in range(5)])
    first = await store.delete_job(job_id, limit=2)
    assert (first.done, first.container_jobs) == (False, 2)
    assert await store.get_job(job_id) is not None  # still there until its last step
    steps = [first, *await delete_all(store, job_id, limit=2)]
    assert [step.container_jobs for step in steps] == [2, 2, 1]
    assert steps[-1].done and steps[-1].stages == 2
    assert await store.get_job(job_id) is None
    assert await store.container_list(bulk_job_id=job_id) == []


async def test_many_exports_go_in_steps_too(store: Store) -> None:
    job_id = await finished(store)
    for index in range(3):
        await store.add_export(make_export(job_id, f"e{index}"))
    steps = await delete_all(store, job_id, limit=2)
    assert [(step.done, step.exports) for step in steps] == [(False, 2), (True, 1)]
    assert await store.get_job(job_id) is None and await store.get_export("e2") is None


async def test_an_unfinished_container_job_of_a_cancelled_job_gives_its_slot_back(
    store: Store,
) -> None:
    await store.host_create(ExecutorHost(id="h1", name="host-h1", executor_type="mock"))
    job_id = await finished(store, BulkJobStatus.CANCELLED)
    child = container_job(job_id)
    await store.container_create(child)
    await store.container_claim("p1", 30, 1)
    await store.container_transition(child.id, "queued")
    await store.container_transition(child.id, "launching")
    host = await store.host_get("h1")
    assert host is not None and host.current_job_count == 1
    await delete_all(store, job_id)
    host = await store.host_get("h1")
    assert host is not None and host.current_job_count == 0
    assert await store.container_get(child.id) is None


@pytest.mark.parametrize("status", [None, BulkJobStatus.PROCESSING])
async def test_a_job_that_has_not_finished_is_not_deleted(
    store: Store, status: BulkJobStatus | None
) -> None:
    job_id = await store.create(new_job(), LIMIT)
    if status is not None:
        await store.update_status(job_id, status)
    with pytest.raises(Conflict, match="cancel it first"):
        await store.delete_job(job_id)
    assert await store.get_job(job_id) is not None
    with pytest.raises(NotFound):
        await store.delete_job("missing")


async def test_finished_before_lists_finished_jobs_oldest_first(store: Store) -> None:
    first = await finished(store)
    second = await finished(store, BulkJobStatus.CANCELLED)
    third = await finished(store, BulkJobStatus.FAILED)
    await store.create(new_job(), LIMIT)  # pending: never listed
    running = await store.create(new_job(), LIMIT)
    await store.update_status(running, BulkJobStatus.PROCESSING)
    later = utcnow() + timedelta(seconds=5)
    assert await store.get_finished_before(later) == [first, second, third]
    assert await store.get_finished_before(later, limit=2) == [first, second]
    assert await store.get_finished_before(utcnow() - timedelta(hours=1)) == []


async def test_tokens_list_newest_first_without_their_hashes(store: Store) -> None:
    alice, bob = hash_token("bjt_alice"), hash_token("bjt_bob")
    await store.create_token(alice, "alice", False, "laptop")
    expires = utcnow() + timedelta(days=3)
    await store.create_token(bob, "bob", True, "ci", expires_at=expires)
    listed = await store.list_tokens()
    assert [(t.user_id, t.token_id) for t in listed] == [
        ("bob", bob[:TOKEN_ID_CHARS]),
        ("alice", alice[:TOKEN_ID_CHARS]),
    ]
    assert listed[0].expires_at is not None
    assert abs((listed[0].expires_at - expires).total_seconds()) < 0.01
    assert listed[1].expires_at is None and listed[1].revoked_at is None
    assert [t.name for t in await store.list_tokens(user_id="alice")] == ["laptop"]
    assert await store.list_tokens(user_id="nobody") == []
    assert [t.user_id for t in await store.list_tokens(limit=1)] == ["bob"]
    assert all(alice not in t.model_dump_json() for t in listed)


async def test_a_revoked_token_stays_listed_and_reads_as_revoked(store: Store) -> None:
    raw = hash_token("bjt_one")
    await store.create_token(raw, "alice", False, "one")
    revoked = await store.revoke_token(raw[:TOKEN_ID_CHARS])
    assert revoked.revoked_at is not None and revoked.user_id == "alice"
    again = await store.revoke_token(raw[:TOKEN_ID_CHARS])
    assert again.revoked_at == revoked.revoked_at  # the first revocation's time is kept
    token = await store.get_token(raw)
    assert token is not None and token.revoked_at == revoked.revoked_at
    assert token.refusal(utcnow()) is not None
    [listed] = await store.list_tokens()
    assert listed.revoked_at == revoked.revoked_at
    for unknown in ("0" * TOKEN_ID_CHARS, raw[:6], ""):
        with pytest.raises(NotFound):
            await store.revoke_token(unknown)


async def test_an_expired_token_is_returned_with_its_expiry(store: Store) -> None:
    raw = hash_token("bjt_old")
    await store.create_token(raw, "alice", False, "old", expires_at=utcnow() - timedelta(1))
    token = await store.get_token(raw)
    assert token is not None and token.expires_at is not None
    assert "expired" in (token.refusal(utcnow()) or "")
