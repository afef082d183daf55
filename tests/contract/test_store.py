"""Contract suite: every Store implementation must pass these tests unchanged."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from src.services.domain import (
    BulkJobStage,
    BulkJobStatus,
    ClaimRules,
    Export,
    Failure,
    NewJob,
    RateLimit,
    StageStatus,
    job_status_for_stage,
    utcnow,
)
from src.services.errors import Conflict, NotFound, RateLimited
from src.services.store.base import Store

STAGES = [BulkJobStage.INITIALIZATION.value, BulkJobStage.CONTENT_FETCH.value]
#: The stages of the usage guide's first example.
GUIDE_STAGES = [
    BulkJobStage.INITIALIZATION,
    BulkJobStage.CONTENT_FETCH,
    BulkJobStage.CONTENT_PROCESSING,
    BulkJobStage.EXPORT_PREPARATION,
    BulkJobStage.EXPORT_GENERATION,
]
LIMIT = RateLimit(max_jobs=1000, window_s=3600)


def new_job(user: str = "u1", job_type: str = "demo", **extra: object) -> NewJob:
    fields: dict[str, object] = {
        "job_type": job_type,
        "user_id": user,
        "job_data": {"n": 1, "nested": {"a": [1, 2]}},
        "stages": STAGES,
    }
    fields.update(extra)
    return NewJob.model_validate(fields)


async def started(store: Store, **extra: object) -> str:
    job_id = await store.create(new_job(**extra), LIMIT)
    await store.update_status(job_id, BulkJobStatus.PROCESSING)
    await store.start_stage(job_id, STAGES[0], items_total=10)
    return job_id


def make_export(job_id: str, export_id: str = "e1", expires_in_s: float = 3600) -> Export:
    now = utcnow()
    return Export(
        id=export_id,
        job_id=job_id,
        user_id="u1",
        format="json",
        filename="export.json",
        relative_path=f"{job_id}/{export_id}.json",
        content_type="application/json",
        size_bytes=12,
        sha256="ab" * 32,
        created_at=now,
        expires_at=now + timedelta(seconds=expires_in_s),
    )


async def test_create_and_get_job(store: Store) -> None:
    job_id = await store.create(new_job(priority="high", estimated_duration_minutes=3), LIMIT)
    job = await store.get_job(job_id)
    assert job is not None
    assert job.status == BulkJobStatus.PENDING
    assert job.job_data == {"n": 1, "nested": {"a": [1, 2]}}
    assert job.priority == "high"
    assert job.estimated_duration_minutes == 3
    assert [stage.name for stage in job.stages] == STAGES
    assert all(stage.status == StageStatus.PENDING for stage in job.stages)
    assert job.progress == 0.0


async def test_create_with_given_id_and_duplicate(store: Store) -> None:
    assert await store.create(new_job(job_id="fixed-1"), LIMIT) == "fixed-1"
    with pytest.raises(Conflict):
        await store.create(new_job(job_id="fixed-1"), LIMIT)


async def test_a_retry_names_the_job_it_retries(store: Store) -> None:
    first = await store.create(new_job(), LIMIT)
    retry = await store.create(new_job(retry_of=first), LIMIT)
    job, original = await store.get_job(retry), await store.get_job(first)
    assert job is not None and job.retry_of == first
    assert original is not None and original.retry_of is None
    (listed, *_) = await store.get_user_jobs("u1", limit=1)
    assert listed.id == retry and listed.retry_of == first


async def test_get_missing_job_is_none(store: Store) -> None:
    assert await store.get_job("nope") is None


async def test_rate_limit_counts_only_the_window(store: Store) -> None:
    limit = RateLimit(max_jobs=2, window_s=3600)
    await store.create(new_job(), limit)
    await store.create(new_job(), limit)
    with pytest.raises(RateLimited) as caught:
        await store.create(new_job(), limit)
    assert 3590 <= caught.value.retry_after_s <= 3600
    await store.create(new_job(user="other"), limit)


async def test_rate_limit_under_concurrent_creates(store: Store) -> None:
    limit = RateLimit(max_jobs=5, window_s=3600)
    results = await asyncio.gather(
        *(store.create(new_job(user="busy"), limit) for _ in range(20)), return_exceptions=True
    )
    admitted = [result for result in results if isinstance(result, str)]
    refused = [result for result in results if isinstance(result, RateLimited)]
    assert len(admitted) == 5
    assert len(refused) == 15


async def test_rate_limit_window_expires(store: Store) -> None:
    limit = RateLimit(max_jobs=1, window_s=0.5)
    await store.create(new_job(), limit)
    with pytest.raises(RateLimited):
        await store.create(new_job(), limit)
    await asyncio.sleep(0.6)
    await store.create(new_job(), limit)


async def test_status_transitions(store: Store) -> None:
    job_id = await store.create(new_job(), LIMIT)
    await store.update_status(job_id, BulkJobStatus.INITIALIZING)
    await store.update_status(job_id, BulkJobStatus.PROCESSING, updates={"fetched": [1, 2]})
    await store.update_status(job_id, BulkJobStatus.COMPLETED)
    job = await store.get_job(job_id)
    assert job is not None
    assert job.results == {"fetched": [1, 2]}
    assert job.started_at is not None and job.completed_at is not None
    with pytest.raises(Conflict):
        await store.update_status(job_id, BulkJobStatus.PROCESSING)


async def test_update_status_missing_job(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.update_status("missing", BulkJobStatus.PROCESSING)


async def test_updates_merge_shallowly(store: Store) -> None:
    job_id = await store.create(new_job(), LIMIT)
    await store.update_status(job_id, BulkJobStatus.PROCESSING, updates={"a": 1, "b": 1})
    await store.update_status(job_id, BulkJobStatus.PROCESSING, updates={"b": 2})
    job = await store.get_job(job_id)
    assert job is not None and job.results == {"a": 1, "b": 2}


async def test_stage_lifecycle(store: Store) -> None:
    job_id = await started(store)
    status = await store.update_stage_progress(
        job_id, STAGES[0], 0.5, items_completed=5, metadata={"k": "v"}
    )
    assert status == BulkJobStatus.INITIALIZING  # the job follows its initialization stage
    await store.complete_stage(job_id, STAGES[0], items_completed=10, items_failed=1)
    job = await store.get_job(job_id)
    assert job is not None
    first = job.stages[0]
    assert first.status == StageStatus.COMPLETED
    assert first.progress == 1.0
    assert (first.items_total, first.items_completed, first.items_failed) == (10, 10, 1)
    assert first.metadata == {"k": "v"}
    assert first.started_at is not None and first.completed_at is not None
    assert job.progress == 0.5


async def test_progress_is_clamped_and_counts_monotonic(store: Store) -> None:
    job_id = await started(store)
    await store.update_stage_progress(job_id, STAGES[0], 7.0, items_completed=8, items_failed=2)
    await store.update_stage_progress(job_id, STAGES[0], -1.0, items_completed=3, items_failed=1)
    job = await store.get_job(job_id)
    assert job is not None
    stage = job.stages[0]
    assert stage.progress == 0.0
    assert (stage.items_completed, stage.items_failed) == (8, 2)
    await store.update_stage_progress(job_id, STAGES[0], 1.5)
    job = await store.get_job(job_id)
    assert job is not None and job.stages[0].progress == 1.0


async def test_illegal_stage_transitions(store: Store) -> None:
    job_id = await store.create(new_job(), LIMIT)
    with pytest.raises(Conflict):
        await store.complete_stage(job_id, STAGES[0])
    with pytest.raises(Conflict):
        await store.update_stage_progress(job_id, STAGES[0], 0.1)
    await store.start_stage(job_id, STAGES[0])
    await store.fail_stage(job_id, STAGES[0], "boom", metadata={"error_type": "network"})
    with pytest.raises(Conflict):
        await store.start_stage(job_id, STAGES[0])
    job = await store.get_job(job_id)
    assert job is not None
    assert job.stages[0].status == StageStatus.FAILED
    assert job.stages[0].error_message == "boom"
    assert job.stages[0].metadata == {"error_type": "network"}


async def test_unknown_stage_is_not_found(store: Store) -> None:
    job_id = await store.create(new_job(), LIMIT)
    with pytest.raises(NotFound):
        await store.start_stage(job_id, "no_such_stage")
    with pytest.raises(NotFound):
        await store.start_stage("no-job", STAGES[0])


async def test_restart_keeps_counts(store: Store) -> None:
    job_id = await started(store)
    await store.update_stage_progress(job_id, STAGES[0], 0.4, items_completed=4)
    await store.start_stage(job_id, STAGES[0], items_total=12)
    job = await store.get_job(job_id)
    assert job is not None
    assert job.stages[0].items_completed == 4
    assert job.stages[0].items_total == 12
    assert job.stages[0].progress == pytest.approx(0.4)


async def test_cancelled_job_takes_no_progress(store: Store) -> None:
    job_id = await started(store)
    await store.update_status(job_id, BulkJobStatus.CANCELLED, error_message="user asked")
    status = await store.update_stage_progress(job_id, STAGES[0], 0.9, items_completed=9)
    assert status == BulkJobStatus.CANCELLED
    job = await store.get_job(job_id)
    assert job is not None
    assert job.stages[0].items_completed == 0
    assert job.error_message == "user asked"
    with pytest.raises(Conflict):
        await store.complete_stage(job_id, STAGES[0])


ALL_STAGES = [stage.value for stage in BulkJobStage]


async def test_a_job_driven_by_hand_follows_its_stages_to_completed(store: Store) -> None:
    stages = [stage.value for stage in GUIDE_STAGES]
    job_id = await store.create(new_job(stages=stages), LIMIT)
    seen = []
    for stage in stages:
        await store.start_stage(job_id, stage, items_total=4)
        job = await store.get_job(job_id)
        assert job is not None and job.current_stage == stage and job.started_at is not None
        seen.append(job.status)
        await store.complete_stage(job_id, stage, items_completed=4)
    assert seen == [
        BulkJobStatus.INITIALIZING,
        BulkJobStatus.PROCESSING,
        BulkJobStatus.PROCESSING,
        BulkJobStatus.EXPORTING,
        BulkJobStatus.EXPORTING,
    ]
    job = await store.get_job(job_id)
    assert job is not None
    assert job.status == BulkJobStatus.COMPLETED
    assert job.completed_at is not None and job.error_message is None
    assert job.progress == 1.0


async def test_every_stage_kind_moves_the_job(store: Store) -> None:
    job_id = await store.create(new_job(stages=ALL_STAGES), LIMIT)
    for stage in ALL_STAGES:
        await store.start_stage(job_id, stage)
        job = await store.get_job(job_id)
        assert job is not None and job.status == job_status_for_stage(stage), stage


async def test_a_stage_failure_fails_the_job(store: Store) -> None:
    job_id = await store.create(new_job(), LIMIT)
    await store.claim("w1", 30, ["demo"])
    await store.start_stage(job_id, STAGES[1])
    await store.fail_stage(job_id, STAGES[1], "network down", metadata={"error_type": "network"})
    job = await store.get_job(job_id)
    assert job is not None
    assert job.status == BulkJobStatus.FAILED
    assert (job.error_message, job.current_stage) == ("network down", STAGES[1])
    assert job.completed_at is not None
    assert job.lease_owner is None and job.lease_expires_at is None
    # The job's other stage is left as it was: pending.
    assert [stage.status for stage in job.stages] == [StageStatus.PENDING, StageStatus.FAILED]


@pytest.mark.parametrize("ended", [BulkJobStatus.CANCELLED, BulkJobStatus.FAILED, "completed"])
async def test_a_late_stage_call_never_revives_an_ended_job(
    store: Store, ended: BulkJobStatus | str
) -> None:
    job_id = await store.create(new_job(stages=[*STAGES, "cleanup"]), LIMIT)
    await store.start_stage(job_id, STAGES[0])
    if ended == "completed":
        for stage in STAGES:
            await store.start_stage(job_id, stage)
            await store.complete_stage(job_id, stage)
        await store.start_stage(job_id, "cleanup")
        await store.complete_stage(job_id, "cleanup")
    else:
        await store.update_status(job_id, BulkJobStatus(ended), error_message="ended")
    before = await store.get_job(job_id)
    assert before is not None and before.is_terminal
    late = [
        lambda: store.start_stage(job_id, STAGES[1]),
        lambda: store.complete_stage(job_id, STAGES[0]),
        lambda: store.fail_stage(job_id, STAGES[0], "late"),
        lambda: store.fail_stage(job_id, STAGES[1], "late", fatal=False),
    ]
    for call in late:
        with pytest.raises(Conflict):
            await call()
    after = await store.get_job(job_id)
    assert after is not None
    assert (after.status, after.error_message) == (before.status, before.error_message)


async def test_a_stage_failure_that_is_not_fatal_keeps_the_job_running(store: Store) -> None:
    job_id = await store.create(new_job(stages=[*STAGES, "cleanup"]), LIMIT)
    await store.start_stage(job_id, STAGES[0])
    await store.fail_stage(job_id, STAGES[0], "one source skipped", fatal=False)
    job = await store.get_job(job_id)
    assert job is not None
    assert (job.status, job.error_message) == (BulkJobStatus.INITIALIZING, None)
    assert job.stages[0].error_message == "one source skipped"
    await store.start_stage(job_id, STAGES[1])
    await store.complete_stage(job_id, STAGES[1])
    job = await store.get_job(job_id)
    assert job is not None and job.status == BulkJobStatus.PROCESSING  # cleanup is left
    # The last stage left failing without being fatal ends the job too: nothing is left.
    await store.start_stage(job_id, "cleanup")
    await store.fail_stage(job_id, "cleanup", "temp files stay", fatal=False)
    job = await store.get_job(job_id)
    assert job is not None
    assert job.status == BulkJobStatus.COMPLETED and job.completed_at is not None


async def test_stages_finished_out_of_order_complete_the_job_at_the_last(store: Store) -> None:
    job_id = await store.create(new_job(), LIMIT)
    await store.start_stage(job_id, STAGES[1], items_total=3)
    await store.complete_stage(job_id, STAGES[1], items_completed=3)
    job = await store.get_job(job_id)
    assert job is not None and job.status == BulkJobStatus.PROCESSING
    await store.start_stage(job_id, STAGES[0])
    job = await store.get_job(job_id)
    assert job is not None
    assert (job.status, job.current_stage) == (BulkJobStatus.INITIALIZING, STAGES[0])
    await store.complete_stage(job_id, STAGES[0])
    job = await store.get_job(job_id)
    assert job is not None and job.status == BulkJobStatus.COMPLETED


async def test_a_completed_job_keeps_no_lease_and_is_not_claimed(store: Store) -> None:
    job_id = await store.create(new_job(stages=[STAGES[1]]), LIMIT)
    [claimed] = await store.claim("w1", 30, ["demo"])
    assert claimed.id == job_id
    await store.start_stage(job_id, STAGES[1])
    assert await store.heartbeat(job_id, "w1", 30) == BulkJobStatus.PROCESSING
    await store.complete_stage(job_id, STAGES[1])
    assert await store.heartbeat(job_id, "w1", 30) == BulkJobStatus.COMPLETED
    await store.release(job_id, "w1")
    job = await store.get_job(job_id)
    assert job is not None and job.lease_owner is None and job.lease_expires_at is None
    assert await store.claim("w2", 30, ["demo"]) == []


async def test_claim_orders_by_priority_then_age(store: Store) -> None:
    low = await store.create(new_job(priority="low"), LIMIT)
    normal = await store.create(new_job(), LIMIT)
    high = await store.create(new_job(priority="high"), LIMIT)
    claimed = await store.claim("w1", 30, ["demo"], limit=3)
    assert [job.id for job in claimed] == [high, normal, low]
    assert all(job.lease_owner == "w1" and job.attempts == 1 for job in claimed)
    assert await store.claim("w2", 30, ["demo"], limit=3) == []


async def test_claim_only_registered_types_and_not_manual_jobs(store: Store) -> None:
    await store.create(new_job(job_type="other"), LIMIT)
    manual = await store.create(new_job(), LIMIT)
    await store.update_status(manual, BulkJobStatus.PROCESSING)
    assert await store.claim("w1", 30, ["demo"], limit=5) == []
    assert await store.claim("w1", 30, [], limit=5) == []


async def test_claim_one_job_by_id(store: Store) -> None:
    first = await store.create(new_job(), LIMIT)
    second = await store.create(new_job(), LIMIT)
    claimed = await store.claim("w1", 30, ["demo"], job_id=second)
    assert [job.id for job in claimed] == [second]
    assert [job.id for job in await store.claim("w1", 30, ["demo"])] == [first]


async def test_concurrent_claims_never_share_a_job(store: Store) -> None:
    for _ in range(10):
        await store.create(new_job(), LIMIT)
    batches = await asyncio.gather(*(store.claim(f"w{i}", 30, ["demo"], limit=3) for i in range(6)))
    ids = [job.id for batch in batches for job in batch]
    assert len(ids) == 10
    assert len(set(ids)) == 10


async def test_lease_expiry_and_reclaim(store: Store) -> None:
    job_id = await store.create(new_job(), LIMIT)
    [claimed] = await store.claim("dead", 0.3, ["demo"])
    assert claimed.id == job_id
    await store.update_status(job_id, BulkJobStatus.PROCESSING)
    assert await store.claim("alive", 30, ["demo"]) == []
    await asyncio.sleep(0.5)
    [again] = await store.claim("alive", 30, ["demo"])
    assert again.id == job_id
    assert again.lease_owner == "alive"
    assert again.attempts == 2
    with pytest.raises(Conflict):
        await store.heartbeat(job_id, "dead", 30)


async def test_heartbeat_and_release(store: Store) -> None:
    job_id = await store.create(new_job(), LIMIT)
    await store.claim("w1", 0.5, ["demo"])
    await store.update_status(job_id, BulkJobStatus.PROCESSING)
    assert await store.heartbeat(job_id, "w1", 30) == BulkJobStatus.PROCESSING
    await asyncio.sleep(0.6)
    assert await store.claim("w2", 30, ["demo"]) == []
    await store.release(job_id, "someone-else")
    job = await store.get_job(job_id)
    assert job is not None and job.lease_owner == "w1"
    await store.release(job_id, "w1")
    job = await store.get_job(job_id)
    assert job is not None and job.lease_owner is None


async def test_heartbeat_reports_cancellation(store: Store) -> None:
    job_id = await store.create(new_job(), LIMIT)
    await store.claim("w1", 30, ["demo"])
    await store.update_status(job_id, BulkJobStatus.CANCELLED)
    assert await store.heartbeat(job_id, "w1", 30) == BulkJobStatus.CANCELLED
    with pytest.raises(NotFound):
        await store.heartbeat("missing", "w1", 30)


async def test_terminal_status_clears_lease(store: Store) -> None:
    job_id = await store.create(new_job(), LIMIT)
    await store.claim("w1", 30, ["demo"])
    await store.update_status(job_id, BulkJobStatus.FAILED, error_message="x")
    job = await store.get_job(job_id)
    assert job is not None and job.lease_owner is None and job.lease_expires_at is None


async def test_user_jobs_filters_and_limit(store: Store) -> None:
    ids = [await store.create(new_job(), LIMIT) for _ in range(4)]
    other_type = await store.create(new_job(job_type="t2"), LIMIT)
    await store.create(new_job(user="u2"), LIMIT)
    await store.update_status(ids[0], BulkJobStatus.CANCELLED)
    jobs = await store.get_user_jobs("u1", limit=10)
    assert [job.id for job in jobs] == [other_type, *reversed(ids)]
    assert [job.id for job in await store.get_user_jobs("u1", limit=2)] == [other_type, ids[3]]
    cancelled = await store.get_user_jobs("u1", status=BulkJobStatus.CANCELLED)
    assert [job.id for job in cancelled] == [ids[0]]
    typed = await store.get_user_jobs("u1", job_type="t2")
    assert [job.id for job in typed] == [other_type]


async def test_user_recent_jobs(store: Store) -> None:
    await store.create(new_job(), LIMIT)
    await asyncio.sleep(0.4)
    recent = await store.create(new_job(), LIMIT)
    jobs = await store.get_user_recent_jobs("u1", 0.3)
    assert [job.id for job in jobs] == [recent]


async def test_exports_round_trip_and_expiry(store: Store) -> None:
    job_id = await store.create(new_job(), LIMIT)
    await store.add_export(make_export(job_id, "keep"))
    await store.add_export(make_export(job_id, "old", expires_in_s=-5))
    export = await store.get_export("keep")
    assert export is not None
    assert (export.job_id, export.size_bytes, export.format) == (job_id, 12, "json")
    job = await store.get_job(job_id)
    assert job is not None and {e.id for e in job.exports} == {"keep", "old"}
    expired = await store.get_expired_exports()
    assert [e.id for e in expired] == ["old"]
    assert await store.remove_export("old") is True
    assert await store.remove_export("old") is False
    assert await store.get_export("old") is None


async def test_add_export_again_replaces_it(store: Store) -> None:
    """A stage resumed after a crash registers its export under the same id again."""
    job_id = await store.create(new_job(), LIMIT)
    other = await store.create(new_job(), LIMIT)
    await store.add_export(make_export(job_id, "fixed"))
    again = make_export(job_id, "fixed").model_copy(update={"size_bytes": 99})
    await store.add_export(again)
    job = await store.get_job(job_id)
    assert job is not None and [(e.id, e.size_bytes) for e in job.exports] == [("fixed", 99)]
    with pytest.raises(Conflict):
        await store.add_export(make_export(other, "fixed"))
    stats = await store.get_job_stats()
    assert (stats.exports, stats.export_bytes) == (1, 99)


async def test_add_export_for_missing_job(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.add_export(make_export("missing"))


async def test_job_stats(store: Store) -> None:
    first = await store.create(new_job(), LIMIT)
    await store.create(new_job(job_type="t2"), LIMIT)
    await store.update_status(first, BulkJobStatus.COMPLETED)
    await store.add_export(make_export(first))
    stats = await store.get_job_stats()
    assert stats.total_jobs == 2
    assert stats.by_status == {"completed": 1, "pending": 1}
    assert stats.by_type == {"demo": 1, "t2": 1}
    assert (stats.exports, stats.export_bytes) == (1, 12)


async def test_tokens(store: Store) -> None:
    assert await store.count_tokens() == 0
    await store.create_token("h1", "alice", True, "first")
    with pytest.raises(Conflict):
        await store.create_token("h1", "bob", False, "dup")
    token = await store.get_token("h1")
    assert token is not None
    assert (token.user_id, token.is_admin, token.name) == ("alice", True, "first")
    assert await store.get_token("h2") is None
    assert await store.count_tokens() == 1


async def test_released_unfinished_job_is_claimable_again(store: Store) -> None:
    job_id = await store.create(new_job(), LIMIT)
    await store.claim("w1", 30, ["demo"])
    await store.update_status(job_id, BulkJobStatus.PROCESSING)
    await store.release(job_id, "w1")
    [again] = await store.claim("w2", 30, ["demo"])
    assert again.id == job_id and again.lease_owner == "w2"


async def test_a_failed_attempt_backs_off_then_fails_the_job_with_its_error(store: Store) -> None:
    job_id = await store.create(new_job(), LIMIT)
    rules = ClaimRules(max_attempts=2)
    await store.claim("w1", 30, ["demo"], rules=rules)
    await store.start_stage(job_id, STAGES[0])
    await store.release(job_id, "w1", Failure(error="boom", retry_in_s=0.3, max_attempts=2))
    job = await store.get_job(job_id)
    assert job is not None and job.last_error == "boom" and job.lease_owner is None
    assert await store.claim("w2", 30, ["demo"], rules=rules) == []  # backing off
    await asyncio.sleep(0.4)
    [again] = await store.claim("w2", 30, ["demo"], rules=rules)
    assert again.attempts == 2
    await store.release(job_id, "w2", Failure(error="boom again", retry_in_s=0, max_attempts=2))
    job = await store.get_job(job_id)
    assert job is not None and job.status == BulkJobStatus.FAILED
    assert job.error_message == "gave up after 2 attempts; last error: boom again"
    assert job.lease_owner is None and job.lease_expires_at is None
    assert await store.claim("w3", 30, ["demo"], rules=rules) == []


async def test_a_hand_back_uses_no_attempt(store: Store) -> None:
    job_id = await store.create(new_job(), LIMIT)
    for owner in ("w1", "w2", "w3"):
        [claimed] = await store.claim(owner, 30, ["demo"], rules=ClaimRules(max_attempts=1))
        assert (claimed.id, claimed.attempts) == (job_id, 1)
        await store.release(job_id, owner)


async def test_a_job_whose_runner_keeps_dying_is_failed_after_its_attempts(store: Store) -> None:
    job_id = await store.create(new_job(), LIMIT)
    rules = ClaimRules(max_attempts=2)
    for owner in ("dead1", "dead2"):
        assert [job.id for job in await store.claim(owner, 0.2, ["demo"], rules=rules)] == [job_id]
        await asyncio.sleep(0.3)  # dies holding it: the lease expires
    assert await store.claim("w3", 30, ["demo"], rules=rules) == []
    job = await store.get_job(job_id)
    assert job is not None and job.status == BulkJobStatus.FAILED
    assert job.error_message is not None and job.error_message.startswith(
        "gave up after 2 attempts; last error: its worker stopped"
    )


async def test_users_take_turns_and_a_user_at_the_cap_waits(store: Store) -> None:
    busy = [await store.create(new_job(user="busy"), LIMIT) for _ in range(6)]
    other = await store.create(new_job(user="other"), LIMIT)
    rules = ClaimRules(max_running_per_user=2)
    first = await store.claim("w1", 30, ["demo"], limit=1, rules=rules)
    assert [job.id for job in first] == [busy[0]]  # the oldest waiting job
    second = await store.claim("w1", 30, ["demo"], limit=1, rules=rules)
    assert [job.id for job in second] == [other]  # the user holding fewer goes next
    third = await store.claim("w1", 30, ["demo"], limit=5, rules=rules)
    assert [job.id for job in third] == [busy[1]]  # busy is at the cap of 2
    assert await store.claim("w1", 30, ["demo"], limit=5, rules=rules) == []
    await store.update_status(busy[0], BulkJobStatus.COMPLETED)
    fourth = await store.claim("w1", 30, ["demo"], limit=5, rules=rules)
    assert [job.id for job in fourth] == [busy[2]]
    # jobs driven by hand (no lease) do not count toward the cap
    manual = await store.create(new_job(user="hands"), LIMIT)
    await store.update_status(manual, BulkJobStatus.PROCESSING)
    mine = [await store.create(new_job(user="hands"), LIMIT) for _ in range(2)]
    taken = await store.claim("w1", 30, ["demo"], limit=5, rules=rules)
    assert sorted(job.id for job in taken) == sorted(mine)


async def test_one_round_gives_every_waiting_user_a_job(store: Store) -> None:
    a = [await store.create(new_job(user="a"), LIMIT) for _ in range(3)]
    b = [await store.create(new_job(user="b"), LIMIT) for _ in range(3)]
    c = await store.create(new_job(user="c"), LIMIT)
    claimed = await store.claim("w1", 30, ["demo"], limit=5)
    assert [job.id for job in claimed] == [a[0], b[0], c, a[1], b[1]]
