"""Contract suite for the container half of the store: LocalStore and ConvexStore alike."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from src.services.domain import ClaimRules, Failure, utcnow
from src.services.domain.containers import (
    ContainerJob,
    EnvironmentVariableTemplate,
    ExecutorHost,
    ExitAttempt,
    ExitRetryPolicy,
)
from src.services.errors import Conflict, HostFull, NotFound
from src.services.store.base import ContainerStore, Store


@pytest.fixture
async def cstore(store: Store) -> AsyncIterator[Any]:
    """The contract `store` (opened the way the service opens it: default host included),
    seen through its container operations."""
    yield store


def job(**fields: Any) -> ContainerJob:
    values: dict[str, Any] = {"id": uuid.uuid4().hex, "docker_image": "busybox", "host_id": "h1"}
    return ContainerJob.model_validate(values | fields)


def host(host_id: str = "h1", **fields: Any) -> ExecutorHost:
    values: dict[str, Any] = {"id": host_id, "name": f"host-{host_id}", "executor_type": "mock"}
    return ExecutorHost.model_validate(values | fields)


async def with_host(store: ContainerStore, *jobs: ContainerJob) -> list[str]:
    await store.host_create(host())
    await store.container_create_batch(list(jobs))
    return [j.id for j in jobs]


async def count(store: ContainerStore, host_id: str = "h1") -> int:
    found = await store.host_get(host_id)
    assert found is not None
    return found.current_job_count


async def test_create_and_get_round_trip(cstore: ContainerStore) -> None:
    created = job(
        name="n",
        memory_limit=256,
        cpu_limit=0.5,
        network_configuration=[{"network_name": "net"}],
        executor_metadata={"a": {"b": [1, 2]}},
        created_by="alice",
        priority=5,
        bulk_job_id="bj",
        item_key="k1",
    )
    await cstore.container_create(created)
    found = await cstore.container_get(created.id)
    assert found is not None
    assert found.model_dump() == created.model_dump()
    assert await cstore.container_get("missing") is None


async def test_duplicate_create_is_a_conflict(cstore: ContainerStore) -> None:
    first = job()
    await cstore.container_create(first)
    with pytest.raises(Conflict):
        await cstore.container_create(job(id=first.id))


async def test_batch_is_atomic(cstore: ContainerStore) -> None:
    a, b = job(), job()
    with pytest.raises(Conflict):
        await cstore.container_create_batch([a, b, job(id=a.id)])
    assert await cstore.container_get_many([a.id, b.id]) == []
    await cstore.container_create_batch([a, b])
    existing = job(id=b.id)
    with pytest.raises(Conflict):
        await cstore.container_create_batch([job(), existing])
    assert len(await cstore.container_list(limit=10)) == 2


async def test_get_many_keeps_order_and_skips_missing(cstore: ContainerStore) -> None:
    a, b, c = job(), job(), job()
    await cstore.container_create_batch([a, b, c])
    found = await cstore.container_get_many([c.id, "nope", a.id])
    assert [j.id for j in found] == [c.id, a.id]


async def test_list_newest_first_with_filters(cstore: ContainerStore) -> None:
    now = utcnow()
    jobs = [
        job(created_at=now - timedelta(seconds=3), created_by="alice", bulk_job_id="bj"),
        job(created_at=now - timedelta(seconds=2), created_by="bob", host_id="h2"),
        job(created_at=now - timedelta(seconds=1), created_by="alice"),
    ]
    await cstore.container_create_batch(jobs)
    await cstore.container_transition(jobs[0].id, "cancelled")
    ids = [j.id for j in jobs]
    assert [j.id for j in await cstore.container_list()] == ids[::-1]
    assert [j.id for j in await cstore.container_list(limit=2)] == [ids[2], ids[1]]
    assert [j.id for j in await cstore.container_list(created_by="alice")] == [ids[2], ids[0]]
    assert [j.id for j in await cstore.container_list(host_id="h2")] == [ids[1]]
    assert [j.id for j in await cstore.container_list(bulk_job_id="bj")] == [ids[0]]
    assert [j.id for j in await cstore.container_list(status="cancelled")] == [ids[0]]
    assert await cstore.container_list(status="pending", created_by="nobody") == []


async def test_claim_orders_by_priority_then_age(cstore: ContainerStore) -> None:
    now = utcnow()
    low = job(priority=-5, created_at=now - timedelta(seconds=9))
    old = job(created_at=now - timedelta(seconds=5))
    new = job(created_at=now - timedelta(seconds=1))
    high = job(priority=10, created_at=now)
    await with_host(cstore, low, old, new, high)
    claimed = await cstore.container_claim("p1", 30, 3)
    assert [j.id for j in claimed] == [high.id, old.id, new.id]
    assert all(j.lease_owner == "p1" and j.lease_expires_at is not None for j in claimed)
    assert [j.id for j in await cstore.container_claim("p2", 30, 10)] == [low.id]
    assert await cstore.container_claim("p3", 30, 10) == []


async def test_expired_lease_is_reclaimable(cstore: ContainerStore) -> None:
    [job_id] = await with_host(cstore, job())
    await cstore.container_claim("dead", 0.3, 1)
    await cstore.container_transition(job_id, "queued")
    assert await cstore.container_claim("alive", 30, 1) == []
    await asyncio.sleep(0.5)
    [again] = await cstore.container_claim("alive", 30, 1)
    assert (again.id, again.lease_owner, again.status) == (job_id, "alive", "queued")
    with pytest.raises(Conflict):
        await cstore.container_heartbeat(job_id, "dead", 30)


async def test_heartbeat_release_and_terminal(cstore: ContainerStore) -> None:
    [job_id] = await with_host(cstore, job())
    await cstore.container_claim("p1", 30, 1)
    assert await cstore.container_heartbeat(job_id, "p1", 30) == "pending"
    await cstore.container_release(job_id, "other")
    kept = await cstore.container_get(job_id)
    assert kept is not None and kept.lease_owner == "p1"
    await cstore.container_release(job_id, "p1")
    [again] = await cstore.container_claim("p2", 30, 1)
    assert again.id == job_id
    await cstore.container_transition(job_id, "cancelled")
    assert await cstore.container_heartbeat(job_id, "someone", 30) == "cancelled"
    with pytest.raises(NotFound):
        await cstore.container_heartbeat("missing", "p1", 30)


async def test_transition_legal_and_illegal(cstore: ContainerStore) -> None:
    [job_id] = await with_host(cstore, job())
    await cstore.container_claim("p1", 30, 1)
    await cstore.container_transition(job_id, "queued")
    await cstore.container_transition(job_id, "launching")
    started = utcnow()
    running = await cstore.container_transition(
        job_id, "running", {"started_at": started, "execution_id": "c1"}
    )
    assert running.status == "running" and running.execution_id == "c1"
    assert running.started_at is not None
    assert abs((running.started_at - started).total_seconds()) < 0.01
    done = await cstore.container_transition(
        job_id, "completed", {"exit_code": 0, "stdout_log": "ok\n"}
    )
    assert done.completed_at is not None and done.exit_code == 0
    assert done.lease_owner is None and done.lease_expires_at is None
    with pytest.raises(Conflict):
        await cstore.container_transition(job_id, "running")
    with pytest.raises(NotFound):
        await cstore.container_transition("missing", "queued")


async def test_transition_clears_a_field_set_to_none(cstore: ContainerStore) -> None:
    [job_id] = await with_host(cstore, job(exit_code=3, memory_limit=64))
    updated = await cstore.container_transition(job_id, "pending", {"exit_code": None})
    assert updated.exit_code is None and updated.memory_limit == 64


async def test_report_id_makes_a_transition_idempotent(cstore: ContainerStore) -> None:
    [job_id] = await with_host(cstore, job())
    await cstore.container_transition(job_id, "launching", report_id="r1")
    await cstore.container_transition(job_id, "running", report_id="r2")
    again = await cstore.container_transition(job_id, "launching", report_id="r1")
    assert again.status == "running"
    assert await count(cstore) == 1


async def test_host_counts_follow_active_jobs(cstore: ContainerStore) -> None:
    a, b = await with_host(cstore, job(), job())
    await cstore.host_create(host("h2"))
    await cstore.container_transition(a, "launching")
    assert await count(cstore) == 1
    await cstore.container_transition(a, "running")
    assert await count(cstore) == 1
    await cstore.container_transition(b, "launching")
    assert await count(cstore) == 2
    await cstore.container_transition(b, "running", {"host_id": "h2"})
    assert (await count(cstore), await count(cstore, "h2")) == (1, 1)
    await cstore.container_transition(a, "completed")
    await cstore.container_transition(b, "failed")
    assert (await count(cstore), await count(cstore, "h2")) == (0, 0)


async def test_launch_retry_frees_the_slot(cstore: ContainerStore) -> None:
    [job_id] = await with_host(cstore, job())
    await cstore.container_transition(job_id, "launching")
    retried = await cstore.container_transition(job_id, "retrying", {"retry_count": 1})
    assert retried.retry_count == 1
    assert await count(cstore) == 0


async def test_an_exit_retry_frees_the_slot_and_keeps_each_run(cstore: ContainerStore) -> None:
    policy = ExitRetryPolicy(retry_on_exit_codes=[3, 137], max_retries=2, backoff_s=0.5)
    [job_id] = await with_host(cstore, job(exit_retry=policy))
    created = await cstore.container_get(job_id)
    assert created is not None and created.exit_retry == policy and created.exit_attempts == []
    await cstore.container_transition(job_id, "launching")
    await cstore.container_transition(job_id, "running")
    now = utcnow()
    run = ExitAttempt(
        attempt=1,
        status="failed",
        exit_code=3,
        error="no good",
        started_at=now - timedelta(seconds=2),
        finished_at=now,
        retry_in_s=0.4,
    )
    fields = {"exit_attempts": [run], "exit_code": 3, "status_message": "exit code 3"}
    retried = await cstore.container_transition(job_id, "retrying", fields)
    assert retried.exit_attempts == [run]
    assert await count(cstore) == 0
    await cstore.container_transition(job_id, "queued")
    await cstore.container_transition(job_id, "launching")
    await cstore.container_transition(job_id, "running")
    last = ExitAttempt(attempt=2, status="completed", exit_code=0, finished_at=utcnow())
    done = await cstore.container_transition(job_id, "completed", {"exit_attempts": [run, last]})
    assert done.exit_attempts == [run, last]
    again = await cstore.container_get(job_id)
    assert again is not None and again.exit_attempts == [run, last]
    assert again.exit_retry == policy


async def test_transition_many_mixed(cstore: ContainerStore) -> None:
    pending, done = await with_host(cstore, job(), job())
    await cstore.container_transition(done, "failed")
    updated, errors = await cstore.container_transition_many(
        [pending, done, "missing", pending], "cancelled", {"status_message": "bulk"}
    )
    assert [(j.id, j.status, j.status_message) for j in updated] == [(pending, "cancelled", "bulk")]
    assert set(errors) == {done, "missing"}
    assert errors["missing"] == "not found"
    unchanged = await cstore.container_get(done)
    assert unchanged is not None and unchanged.status == "failed"
    assert unchanged.status_message == ""


async def test_migrate_only_unstarted_jobs(cstore: ContainerStore) -> None:
    waiting, active = await with_host(cstore, job(), job())
    await cstore.host_create(host("h2", executor_type="docker"))
    await cstore.container_transition(active, "launching")
    moved, errors = await cstore.container_migrate([waiting, active, "missing"], "h2", "docker")
    assert moved == [waiting]
    assert set(errors) == {active, "missing"}
    found = await cstore.container_get(waiting)
    assert found is not None and (found.host_id, found.executor_type) == ("h2", "docker")
    with pytest.raises(NotFound):
        await cstore.container_migrate([waiting], "no-host", "docker")


async def test_remove_with_and_without_force(cstore: ContainerStore) -> None:
    done, active = await with_host(cstore, job(), job())
    await cstore.container_transition(done, "cancelled")
    await cstore.container_transition(active, "launching")
    assert await cstore.container_remove([done, active, "missing"]) == [done]
    assert await cstore.container_get(done) is None
    assert await count(cstore) == 1
    assert await cstore.container_remove([active], force=True) == [active]
    assert await count(cstore) == 0


async def test_remove_finished_before(cstore: ContainerStore) -> None:
    now = utcnow()
    old = [job(created_at=now - timedelta(days=2)) for _ in range(3)]
    recent, unfinished = job(), job(created_at=now - timedelta(days=2))
    await cstore.container_create_batch([*old, recent, unfinished])
    for finished in [*old, recent]:
        await cstore.container_transition(finished.id, "failed")
    cutoff = now - timedelta(days=1)
    assert await cstore.container_remove_finished_before(cutoff, 2) == 2
    assert await cstore.container_remove_finished_before(cutoff, 2) == 1
    assert await cstore.container_remove_finished_before(cutoff, 2) == 0
    left = await cstore.container_get_many([recent.id, unfinished.id])
    assert [j.id for j in left] == [recent.id, unfinished.id]


async def test_count_by_status(cstore: ContainerStore) -> None:
    assert await cstore.container_count_by_status() == {}
    a, _, _ = await with_host(cstore, job(), job(), job())
    await cstore.container_transition(a, "queued")
    assert await cstore.container_count_by_status() == {"pending": 2, "queued": 1}


async def test_default_local_host_on_a_fresh_store(cstore: ContainerStore) -> None:
    [local] = await cstore.host_list()
    assert (local.id, local.name, local.executor_type) == ("local", "local", "local")
    assert local.max_concurrent_jobs == 4 and local.is_active
    await cstore.open()  # type: ignore[attr-defined]  # opening again adds nothing
    assert len(await cstore.host_list()) == 1


async def test_host_create_update_and_duplicates(cstore: ContainerStore) -> None:
    created = host(executor_config={"region": "eu", "api_key": "s"}, cost_per_hour=1.5)
    await cstore.host_create(created)
    found = await cstore.host_get("h1")
    assert found is not None and found.model_dump() == created.model_dump()
    with pytest.raises(Conflict):
        await cstore.host_create(host("h9", name=created.name))
    with pytest.raises(Conflict):
        await cstore.host_create(host("h1", name="other"))
    updated = await cstore.host_update(
        "h1", {"weight": 7, "is_active": False, "cost_per_hour": None}
    )
    assert (updated.weight, updated.is_active, updated.cost_per_hour) == (7, False, None)
    with pytest.raises(Conflict):
        await cstore.host_update("h1", {"name": "local"})
    with pytest.raises(NotFound):
        await cstore.host_update("nope", {"weight": 1})
    by_name = await cstore.host_get_by_name(created.name)
    assert by_name is not None and by_name.id == "h1"
    assert await cstore.host_get_by_name("nope") is None
    assert [h.id for h in await cstore.host_list()] == ["h1", "local"]
    assert [h.id for h in await cstore.host_list(active_only=True)] == ["local"]


async def test_host_health(cstore: ContainerStore) -> None:
    await cstore.host_create(host())
    for _ in range(2):
        await cstore.host_record_health("h1", False)
    checked = await cstore.host_record_health("h1", False)
    assert checked.health_check_failures == 3 and not checked.is_healthy()
    healthy = await cstore.host_record_health("h1", True)
    assert healthy.health_check_failures == 0 and healthy.is_healthy()
    assert healthy.last_health_check is not None
    with pytest.raises(NotFound):
        await cstore.host_record_health("nope", True)


async def test_host_health_keeps_each_result_and_a_threshold(cstore: ContainerStore) -> None:
    await cstore.host_create(host())
    first = await cstore.host_record_health("h1", False, "connection refused", threshold=2)
    assert (first.health_check_failures, first.healthy) == (1, True)
    assert first.last_health_error == "connection refused"
    assert first.last_health_check is not None
    launch = await cstore.host_record_health(
        "h1", False, "launch failed: down", threshold=2, probe=False
    )
    assert (launch.health_check_failures, launch.healthy) == (2, False)
    assert launch.last_health_error == "launch failed: down"
    assert launch.last_health_check == first.last_health_check  # only probes move it
    (listed,) = [h for h in await cstore.host_list() if h.id == "h1"]
    assert not listed.healthy and not listed.is_available()
    back = await cstore.host_record_health("h1", True, threshold=2)
    assert (back.health_check_failures, back.healthy, back.last_health_error) == (0, True, None)


async def test_probes_are_claimed_once_per_interval(cstore: ContainerStore) -> None:
    await cstore.host_create(host())
    await cstore.host_create(host("h2", is_active=False))
    first = await cstore.host_claim_probes(60, 10)
    assert sorted(h.id for h in first) == ["h1", "local"]  # never the inactive host
    assert all(h.next_probe_at is not None and h.next_probe_at > utcnow() for h in first)
    assert await cstore.host_claim_probes(60, 10) == []  # not due again for a minute
    stored = await cstore.host_get("h1")
    assert stored is not None and stored.next_probe_at is not None
    soon = await cstore.host_claim_probes(60, 1)
    assert soon == []
    await cstore.host_update("h1", {"next_probe_at": utcnow() - timedelta(seconds=1)})
    (due,) = await cstore.host_claim_probes(0.001, 5)
    assert due.id == "h1"


async def test_host_count_moves_atomically_within_bounds(cstore: ContainerStore) -> None:
    await cstore.host_create(host(max_concurrent_jobs=2))
    counts = [(await cstore.host_adjust_count("h1", +1)).current_job_count for _ in range(3)]
    assert counts == [1, 2, 2]  # stops at max_concurrent_jobs
    counts = [(await cstore.host_adjust_count("h1", -1)).current_job_count for _ in range(3)]
    assert counts == [1, 0, 0]  # stops at 0
    await asyncio.gather(*(cstore.host_adjust_count("h1", +1) for _ in range(5)))
    assert await count(cstore) == 2  # concurrent increments never pass the maximum
    with pytest.raises(NotFound):
        await cstore.host_adjust_count("nope", +1)


async def test_templates(cstore: ContainerStore) -> None:
    template = EnvironmentVariableTemplate(
        id="t1", name="base", environment_variables_text="A=1\n", supported_executors=["docker"]
    )
    await cstore.template_create(template)
    found = await cstore.template_get("t1")
    assert found is not None and found.model_dump() == template.model_dump()
    with pytest.raises(Conflict):
        await cstore.template_create(template.model_copy(update={"id": "t2"}))
    await cstore.template_create(EnvironmentVariableTemplate(id="t0", name="a-first"))
    updated = await cstore.template_update("t1", {"environment_variables_text": "B=2\n"})
    assert updated.get_environment_variables_dict() == {"B": "2"}
    by_name = await cstore.template_get_by_name("base")
    assert by_name is not None and by_name.environment_variables_text == "B=2\n"
    assert await cstore.template_get_by_name("nope") is None
    assert [t.name for t in await cstore.template_list()] == ["a-first", "base"]
    with pytest.raises(Conflict):
        await cstore.template_update("t1", {"name": "a-first"})
    with pytest.raises(NotFound):
        await cstore.template_update("nope", {"name": "x"})


async def test_a_full_host_refuses_another_active_job(cstore: ContainerStore) -> None:
    await cstore.host_create(host(max_concurrent_jobs=1))
    first, second = job(host_id="h1"), job(host_id="h1")
    await cstore.container_create_batch([first, second])
    await cstore.container_transition(first.id, "launching")
    with pytest.raises(HostFull):
        await cstore.container_transition(second.id, "launching", report_id="r-full")
    assert (await cstore.container_get(second.id)).status == "pending"  # type: ignore[union-attr]  # the job exists: created above
    assert await count(cstore) == 1
    await cstore.container_transition(first.id, "failed")
    # The refused report was rolled back with the transition: the same id applies now.
    moved = await cstore.container_transition(second.id, "launching", report_id="r-full")
    assert moved.status == "launching" and await count(cstore) == 1


async def test_a_full_hosts_backlog_is_not_claimed(cstore: ContainerStore) -> None:
    await cstore.host_create(host(max_concurrent_jobs=1))
    first, second = job(), job()
    await cstore.container_create_batch([first, second])
    claimed = await cstore.container_claim("p1", 30, 10)
    assert [j.id for j in claimed] == [first.id]  # one slot: one claimed, not yet launched
    assert await cstore.container_claim("p2", 30, 10) == []
    await cstore.container_transition(first.id, "queued")
    await cstore.container_transition(first.id, "launching")
    assert await cstore.container_claim("p2", 30, 10) == []
    await cstore.container_transition(first.id, "running")
    await cstore.container_transition(first.id, "completed")
    assert [j.id for j in await cstore.container_claim("p2", 30, 10)] == [second.id]


async def test_container_users_take_turns(cstore: ContainerStore) -> None:
    now = utcnow()
    a = [job(created_by="a", created_at=now - timedelta(seconds=9 - n)) for n in range(3)]
    b = job(created_by="b", created_at=now)
    await with_host(cstore, *a, b)
    first = await cstore.container_claim("p1", 30, 1)
    assert [j.id for j in first] == [a[0].id]
    second = await cstore.container_claim("p1", 30, 1)
    assert [j.id for j in second] == [b.id]  # a holds one already
    rest = await cstore.container_claim("p1", 30, 10)
    assert [j.id for j in rest] == [a[1].id, a[2].id]


async def test_claim_for_one_bulk_job(cstore: ContainerStore) -> None:
    mine, other = job(bulk_job_id="bulk-1"), job(bulk_job_id="bulk-2")
    await with_host(cstore, other, mine)
    claimed = await cstore.container_claim("p1", 30, 10, bulk_job_id="bulk-1")
    assert [j.id for j in claimed] == [mine.id]


async def test_a_failed_container_attempt_backs_off_then_gives_up(cstore: ContainerStore) -> None:
    [job_id] = await with_host(cstore, job())
    rules = ClaimRules(max_attempts=2)
    [claimed] = await cstore.container_claim("p1", 30, 1, rules=rules)
    assert claimed.attempts == 1
    await cstore.container_transition(job_id, "queued")
    await cstore.container_transition(job_id, "launching")
    assert await count(cstore) == 1
    status = await cstore.container_release(job_id, "p1", Failure(error="down", retry_in_s=0.3))
    assert status == "launching"
    assert await cstore.container_claim("p2", 30, 1, rules=rules) == []  # backing off
    await asyncio.sleep(0.4)
    [again] = await cstore.container_claim("p2", 30, 1, rules=rules)
    assert (again.attempts, again.last_error) == (2, "down")
    failure = Failure(error="still down", retry_in_s=0, max_attempts=2)
    assert await cstore.container_release(job_id, "p2", failure) == "failed"
    done = await cstore.container_get(job_id)
    assert done is not None and done.status == "failed"
    assert done.status_message == "gave up after 2 attempts; last error: still down"
    assert done.lease_owner is None
    assert await count(cstore) == 0  # the slot it held is free again


async def test_a_container_hand_back_uses_no_attempt(cstore: ContainerStore) -> None:
    [job_id] = await with_host(cstore, job())
    for owner in ("p1", "p2"):
        [claimed] = await cstore.container_claim(owner, 30, 1, rules=ClaimRules(max_attempts=1))
        assert (claimed.id, claimed.attempts) == (job_id, 1)
        assert await cstore.container_release(job_id, owner) == "pending"


async def test_a_container_job_whose_processor_keeps_dying_fails(cstore: ContainerStore) -> None:
    [job_id] = await with_host(cstore, job())
    rules = ClaimRules(max_attempts=1)
    await cstore.container_claim("dead", 0.2, 1, rules=rules)
    await cstore.container_transition(job_id, "queued")
    await asyncio.sleep(0.3)
    assert await cstore.container_claim("p2", 30, 1, rules=rules) == []
    done = await cstore.container_get(job_id)
    assert done is not None and done.status == "failed"
    assert done.status_message.startswith("gave up after 1 attempts; last error: its worker")


async def test_create_copies_writes_one_document_under_each_id(cstore: ContainerStore) -> None:
    model = job(name="copy", memory_limit=64, network_configuration=[{"network_name": "n"}])
    await with_host(cstore)
    ids = [uuid.uuid4().hex for _ in range(3)]
    await cstore.container_create_copies(model, ids)
    copies = await cstore.container_get_many(ids)
    assert [c.id for c in copies] == ids
    expected = model.model_dump(exclude={"id"})
    assert all(c.model_dump(exclude={"id"}) == expected for c in copies)
    with pytest.raises(Conflict):  # one id taken: none of the batch is written
        await cstore.container_create_copies(model, [uuid.uuid4().hex, ids[0]])
    assert len(await cstore.container_list(limit=100)) == 3
