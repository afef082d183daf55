"""Stage retry policies: a job type's stage whose processor raises a transient error (the
store or the network out of reach) is started again after a back-off, within its attempts,
and the stage says how many attempts it took and why the last one failed; on both stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from rich.console import Console

from src.cli_report import outcome, print_outcome
from src.config import Settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.domain import BulkJobStage, BulkJobStatus, StageStatus
from src.services.errors import StoreAuthError, StoreUnavailable
from src.services.job_types import job_types
from src.services.job_types.registry import JobTypeRegistry
from src.services.reports import JobReport
from src.services.runner import (
    ATTEMPTS,
    LAST_ERROR,
    StageContext,
    StageRetryPolicy,
    read_stage_output,
)
from src.services.store.base import Store
from src.services.worker.registry import OperationRegistry
from src.services.worker.scheduler import Scheduler
from src.services.worker.sources import BulkJobSource

STAGES = [BulkJobStage.INITIALIZATION, BulkJobStage.CONTENT_FETCH]
FETCH = BulkJobStage.CONTENT_FETCH.value
FAST = StageRetryPolicy(attempts=3, backoff_s=0.01)


@pytest.fixture
async def manager(settings: Settings, store: Store) -> AsyncIterator[BulkJobManager]:
    manager = BulkJobManager(settings, store)
    yield manager
    await manager.aclose()


class Flaky:
    """A fetch stage that raises `errors` in turn, one per attempt, then succeeds."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def init(self, ctx: StageContext) -> None:
        await ctx.report(1, total=1)

    async def fetch(self, ctx: StageContext) -> dict[str, int]:
        self.calls += 1
        await ctx.start(4)
        await ctx.report(2, total=4)
        if self.errors:
            raise self.errors.pop(0)
        await ctx.report(4, total=4)
        return {"calls": self.calls}

    def processors(self) -> dict[str, Callable[[StageContext], Any]]:
        return {BulkJobStage.INITIALIZATION: self.init, BulkJobStage.CONTENT_FETCH: self.fetch}


async def run(
    manager: BulkJobManager, flaky: Flaky, retries: dict[str, StageRetryPolicy] | None
) -> JobReport:
    job_id = await manager.create_bulk_job("flaky", "u1", {}, STAGES)
    report = await manager.process_job_with_stages(
        job_id, flaky.processors(), kinds=("bulk_job",), stage_retries=retries
    )
    assert report is not None
    return report


def fetch_stage(report: JobReport) -> Any:
    return next(stage for stage in report.stages if stage.name == FETCH)


async def test_a_transient_error_starts_the_stage_again(manager: BulkJobManager) -> None:
    flaky = Flaky(StoreUnavailable("convex: HTTP 503"), httpx.ConnectError("refused"))
    report = await run(manager, flaky, {FETCH: FAST})
    assert report.status == BulkJobStatus.COMPLETED, report.error_message
    assert flaky.calls == 3
    stage = fetch_stage(report)
    assert stage.status == StageStatus.COMPLETED
    assert (stage.items_completed, stage.items_total) == (4, 4)
    assert stage.metadata[ATTEMPTS] == 3
    assert stage.metadata[LAST_ERROR] == "ConnectError: refused"
    kept = read_stage_output(manager.settings.bulk_export_path, report.job_id, FETCH)
    assert kept == {"calls": 3}  # the output of the attempt that succeeded


async def test_the_last_attempt_fails_the_stage_and_the_job(manager: BulkJobManager) -> None:
    flaky = Flaky(*(StoreUnavailable(f"down {n}") for n in range(1, 10)))
    report = await run(manager, flaky, {FETCH: FAST})
    assert report.status == BulkJobStatus.FAILED
    assert flaky.calls == 3
    stage = fetch_stage(report)
    assert stage.status == StageStatus.FAILED
    assert stage.error_message == "StoreUnavailable: down 3"
    assert (stage.metadata[ATTEMPTS], stage.metadata[LAST_ERROR]) == (3, "StoreUnavailable: down 3")
    assert report.failed_stage == FETCH


@pytest.mark.parametrize(
    "error",
    [ValueError("a bug, not an outage"), StoreAuthError("the deploy key was refused")],
)
async def test_an_error_that_is_not_transient_fails_at_once(
    manager: BulkJobManager, error: Exception
) -> None:
    flaky = Flaky(error)
    report = await run(manager, flaky, {FETCH: FAST})
    assert report.status == BulkJobStatus.FAILED
    assert flaky.calls == 1
    assert fetch_stage(report).metadata[ATTEMPTS] == 1


async def test_a_stage_without_a_policy_fails_at_once(manager: BulkJobManager) -> None:
    flaky = Flaky(StoreUnavailable("down"))
    report = await run(manager, flaky, None)
    assert report.status == BulkJobStatus.FAILED
    assert flaky.calls == 1
    assert ATTEMPTS not in fetch_stage(report).metadata


async def test_a_policy_may_name_what_counts_as_transient(manager: BulkJobManager) -> None:
    policy = StageRetryPolicy(attempts=2, backoff_s=0.01, transient=(LookupError,))
    flaky = Flaky(KeyError("not yet"))
    report = await run(manager, flaky, {FETCH: policy})
    assert report.status == BulkJobStatus.COMPLETED, report.error_message
    assert fetch_stage(report).metadata[ATTEMPTS] == 2


async def test_a_job_cancelled_during_the_back_off_ends_cancelled(
    manager: BulkJobManager,
) -> None:
    flaky = Flaky(StoreUnavailable("down"))
    job_id = await manager.create_bulk_job("flaky", "u1", {}, STAGES)
    slow = {FETCH: StageRetryPolicy(attempts=3, backoff_s=30)}
    running = asyncio.create_task(
        manager.process_job_with_stages(job_id, flaky.processors(), ("bulk_job",), slow)
    )
    for _ in range(600):
        job = await manager.get_job(job_id)
        fetch = job.stage(FETCH) if job else None
        if fetch is not None and fetch.metadata.get(ATTEMPTS) == 2:
            break
        await asyncio.sleep(0.02)
    await manager.cancel_job(job_id)
    report = await asyncio.wait_for(running, 30)
    assert report is not None and report.status == BulkJobStatus.CANCELLED
    assert flaky.calls == 1


async def test_a_worker_retries_the_stages_its_job_type_declares(
    manager: BulkJobManager,
) -> None:
    registry = JobTypeRegistry()
    flaky = Flaky(StoreUnavailable("a blip"))
    registry.register("flaky", STAGES, flaky.processors(), stage_retries={FETCH: FAST})
    job_id = await manager.create_bulk_job("flaky", "u1", {}, STAGES)
    operations = OperationRegistry()
    operations.add_source(BulkJobSource(await manager.job_port(), registry, manager.settings))
    store = await manager.store()
    worker = Scheduler("worker", None, 1, 1, store, operations, None, 5, 0.05)
    await asyncio.wait_for(worker.run(burst=True), 30)
    done = await outcome(manager, job_id)
    assert done.report.status == BulkJobStatus.COMPLETED
    console = Console(record=True, width=200)
    print_outcome(done, console)
    assert "stage content_fetch: 2 attempts; last error: StoreUnavailable: a blip" in (
        console.export_text()
    )


def test_a_policy_names_only_stages_of_its_job_type() -> None:
    registry = JobTypeRegistry()
    with pytest.raises(ValueError, match="no stage export_generation"):
        registry.register("t", STAGES, stage_retries={"export_generation": FAST})
    with pytest.raises(ValueError, match="at least 1 attempt"):
        StageRetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="above 0 s"):
        StageRetryPolicy(backoff_s=0)


def test_the_built_in_job_types_declare_their_stage_policies() -> None:
    for name in ("http_fetch", "container_batch", "sample"):
        declared = job_types.get(name).stage_retries
        assert declared, name
        assert set(declared) <= set(job_types.get(name).stages)
        assert all(policy.attempts > 1 for policy in declared.values())
