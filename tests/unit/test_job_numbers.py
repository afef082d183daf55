"""The job's numbers are its items, and its current stage is the one it is in (domain.Job)."""

from __future__ import annotations

from typing import Any

import pytest

from src.services.domain import (
    BOOKKEEPING_STAGES,
    BulkJobStage,
    BulkJobStatus,
    Job,
    Stage,
    StageStatus,
    utcnow,
)
from src.services.reports import job_report


def stage(name: str, status: str = "pending", **counts: Any) -> Stage:
    return Stage(name=name, index=0, status=StageStatus(status), **counts)


def job(*stages: Stage, status: str = "processing", **fields: Any) -> Job:
    now = utcnow()
    return Job(
        id="j1",
        job_type="demo",
        user_id="u1",
        status=BulkJobStatus(status),
        created_at=now,
        updated_at=now,
        stages=list(stages),
        **fields,
    )


def numbers(subject: Job) -> tuple[int | None, int, int]:
    return subject.items_total, subject.items_completed, subject.items_failed


def test_bookkeeping_stages_are_stated_once() -> None:
    assert {
        BulkJobStage.INITIALIZATION,
        BulkJobStage.EXPORT_PREPARATION,
        BulkJobStage.EXPORT_GENERATION,
        BulkJobStage.CLEANUP,
    } == BOOKKEEPING_STAGES


def test_two_stages_over_the_same_items_count_them_once() -> None:
    done = job(
        stage("content_fetch", "completed", items_total=40, items_completed=40),
        stage(
            "content_processing", "completed", items_total=40, items_completed=38, items_failed=2
        ),
        status="completed",
    )
    assert numbers(done) == (40, 38, 2)


def test_one_url_through_http_fetch_reads_one_item() -> None:
    fetched = job(
        stage("initialization", "completed", items_total=1, items_completed=1),
        stage("content_fetch", "completed", items_total=1, items_failed=1),
        stage("content_processing", "completed", items_total=1, items_failed=1),
        stage("export_generation", "completed", items_total=1, items_completed=1),
        status="completed",
    )
    assert numbers(fetched) == (1, 0, 1)


def test_the_running_stage_counts_while_it_runs() -> None:
    running = job(
        stage("initialization", "completed", items_total=1, items_completed=1),
        stage("content_fetch", "completed", items_total=200, items_completed=200),
        stage("content_processing", "processing", items_total=200, items_completed=12),
        stage("export_generation"),
        current_stage="content_processing",
    )
    assert numbers(running) == (200, 12, 0)
    # Between stages, the last one with items.
    between = job(*running.stages[:2], stage("content_processing"), stage("export_generation"))
    assert numbers(between) == (200, 200, 0)


@pytest.mark.parametrize(("given", "total"), [(50, 50), (50.0, 50), (-1, 9), ("50", 9), (True, 9)])
def test_job_data_total_items_when_it_is_a_count(given: Any, total: int) -> None:
    subject = job(
        stage("content_fetch", "processing", items_total=9), job_data={"total_items": given}
    )
    assert subject.items_total == total


def test_a_job_of_bookkeeping_stages_only_counts_them() -> None:
    subject = job(stage("export_generation", "processing", items_total=3, items_completed=1))
    assert numbers(subject) == (3, 1, 0)


def test_nothing_counted_yet() -> None:
    assert numbers(job(stage("initialization"), stage("content_fetch"), status="pending")) == (
        None,
        0,
        0,
    )


def test_current_stage_is_the_one_started_not_the_first_unfinished() -> None:
    # The usage guide starts content_fetch without ever running initialization.
    subject = job(
        stage("initialization"), stage("content_fetch", "processing"), current_stage="content_fetch"
    )
    report = job_report(subject)
    assert (report.current_stage, report.failed_stage) == ("content_fetch", None)


def test_a_failed_job_names_the_stage_that_failed_it() -> None:
    subject = job(
        stage("content_fetch", "failed", error_message="down"),
        stage("export_generation"),
        status="failed",
        current_stage="content_fetch",
        error_message="down",
    )
    report = job_report(subject)
    assert (report.current_stage, report.failed_stage, report.error_message) == (
        None,
        "content_fetch",
        "down",
    )
