"""The Store protocol: every state operation of the service, named after its Convex function.

`LocalStore` (SQLite) and `ConvexStore` (Convex HTTP API) implement the same methods with the
same semantics; the contract suite in tests/contract runs against both. Each method is one
transaction (one Convex mutation or query).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from src.services.containers.models import (
    ContainerJob,
    EnvironmentVariableTemplate,
    ExecutorHost,
)
from src.services.domain import (
    ApiToken,
    BulkJobStatus,
    Export,
    Job,
    JobStats,
    NewJob,
    RateLimit,
)
from src.services.errors import (
    BulkJobError,
    Conflict,
    NotFound,
    RateLimited,
    StoreUnavailable,
)
from src.services.worker.models import NewWorkItem, ReportAck, WorkItem, WorkReport

__all__ = [
    "BulkJobError",
    "Conflict",
    "NotFound",
    "RateLimited",
    "Store",
    "StoreUnavailable",
]

#: Upper bound of any list a store returns in one call.
MAX_PAGE = 200


class Store(Protocol):
    """State operations; each is atomic. Times are the store's own clock."""

    # bulkJobs:create -- checks the user's rate limit in the same transaction.
    async def create(self, job: NewJob, limit: RateLimit) -> str: ...

    # bulkJobs:updateStatus -- merges `updates` into the job's results.
    async def update_status(
        self,
        job_id: str,
        status: BulkJobStatus,
        updates: dict[str, Any] | None = None,
        error_message: str | None = None,
    ) -> None: ...

    # bulkJobs:startStage
    async def start_stage(
        self, job_id: str, stage: str, items_total: int | None = None
    ) -> None: ...

    # bulkJobs:updateStageProgress -- returns the job status so runners notice cancellation.
    async def update_stage_progress(
        self,
        job_id: str,
        stage: str,
        progress: float,
        items_completed: int | None = None,
        items_failed: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> BulkJobStatus: ...

    # bulkJobs:completeStage
    async def complete_stage(
        self,
        job_id: str,
        stage: str,
        items_completed: int | None = None,
        items_failed: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None: ...

    # bulkJobs:failStage
    async def fail_stage(
        self,
        job_id: str,
        stage: str,
        error_message: str,
        metadata: dict[str, Any] | None = None,
    ) -> None: ...

    # bulkJobs:addExport
    async def add_export(self, export: Export) -> None: ...

    # bulkJobs:removeExport -- True when a record was removed.
    async def remove_export(self, export_id: str) -> bool: ...

    # bulkJobs:claim -- pending jobs of `job_types` and running jobs whose lease expired,
    # highest priority first, then oldest. Jobs driven by hand (active, never leased) and
    # jobs of types this runner has no processors for are never claimed.
    async def claim(
        self,
        owner: str,
        lease_s: float,
        job_types: list[str],
        limit: int = 1,
        job_id: str | None = None,
    ) -> list[Job]: ...

    # bulkJobs:heartbeat -- renews the lease; Conflict when the lease was lost.
    async def heartbeat(self, job_id: str, owner: str, lease_s: float) -> BulkJobStatus: ...

    # bulkJobs:release -- gives the lease up; an unfinished job is claimable again at once
    # (lease expiry set in the past), a finished one keeps no lease.
    async def release(self, job_id: str, owner: str) -> None: ...

    # bulkJobs:getJobInternal
    async def get_job(self, job_id: str) -> Job | None: ...

    # bulkJobs:getUserJobsInternal -- newest first, at most `limit` (<= MAX_PAGE).
    async def get_user_jobs(
        self,
        user_id: str,
        status: BulkJobStatus | None = None,
        job_type: str | None = None,
        limit: int = 10,
    ) -> list[Job]: ...

    # bulkJobs:getUserRecentJobs -- jobs created within the last `window_s` seconds.
    async def get_user_recent_jobs(self, user_id: str, window_s: float) -> list[Job]: ...

    # bulkJobs:getExport
    async def get_export(self, export_id: str) -> Export | None: ...

    # bulkJobs:getExpiredExports
    async def get_expired_exports(self, limit: int = 100) -> list[Export]: ...

    # bulkJobs:getJobStats
    async def get_job_stats(self) -> JobStats: ...

    # apiTokens:create
    async def create_token(
        self, token_hash: str, user_id: str, is_admin: bool, name: str
    ) -> None: ...

    # apiTokens:getByHash
    async def get_token(self, token_hash: str) -> ApiToken | None: ...

    # apiTokens:count
    async def count_tokens(self) -> int: ...

    async def aclose(self) -> None: ...


class ContainerStore(Protocol):
    """Container job, executor host and template operations (Convex modules containerJobs,
    executorHosts and envTemplates; `containerJobs:create` <-> `container_create`)."""

    # containerJobs:create / createBatch -- a batch is one transaction.
    async def container_create(self, job: ContainerJob) -> None: ...

    async def container_create_batch(self, jobs: list[ContainerJob]) -> None: ...

    # containerJobs:get / getMany / list (newest first, bounded)
    async def container_get(self, job_id: str) -> ContainerJob | None: ...

    async def container_get_many(self, job_ids: list[str]) -> list[ContainerJob]: ...

    async def container_list(
        self,
        status: str | None = None,
        host_id: str | None = None,
        created_by: str | None = None,
        bulk_job_id: str | None = None,
        limit: int = 50,
    ) -> list[ContainerJob]: ...

    # containerJobs:claim -- pending jobs, and unfinished ones whose processor's lease expired.
    async def container_claim(
        self, owner: str, lease_s: float, limit: int
    ) -> list[ContainerJob]: ...

    # containerJobs:transition -- status change plus field updates in one transaction; host
    # job counts follow jobs into and out of launching/running. A report id makes it
    # idempotent: a report applied once is not applied again.
    async def container_transition(
        self,
        job_id: str,
        status: str,
        fields: dict[str, Any] | None = None,
        report_id: str | None = None,
    ) -> ContainerJob: ...

    # containerJobs:transitionMany -- many status changes in one transaction. Each change is
    # checked against the status table inside the transaction (so concurrent bulk updates on
    # overlapping ids never apply an illegal transition); an illegal or missing one is
    # skipped and reported. Returns (updated jobs, {job_id: error}).
    async def container_transition_many(
        self, job_ids: list[str], status: str, fields: dict[str, Any] | None = None
    ) -> tuple[list[ContainerJob], dict[str, str]]: ...

    # containerJobs:migrate -- moves jobs that have not started (pending, queued, retrying)
    # to another host and executor type, in one transaction. Returns (moved ids,
    # {job_id: error}) for the ones that had started or do not exist.
    async def container_migrate(
        self, job_ids: list[str], host_id: str, executor_type: str
    ) -> tuple[list[str], dict[str, str]]: ...

    # containerJobs:removeFinishedBefore -- deletes up to `limit` finished jobs created before
    # `before`; returns how many. Callers loop until 0.
    async def container_remove_finished_before(self, before: datetime, limit: int) -> int: ...

    # containerJobs:countByStatus
    async def container_count_by_status(self) -> dict[str, int]: ...

    # containerJobs:heartbeat / release
    async def container_heartbeat(self, job_id: str, owner: str, lease_s: float) -> str: ...

    async def container_release(self, job_id: str, owner: str) -> None: ...

    # containerJobs:remove -- finished jobs only unless forced; returns the ids removed.
    async def container_remove(self, job_ids: list[str], force: bool = False) -> list[str]: ...

    # executorHosts:*
    async def host_create(self, host: ExecutorHost) -> None: ...

    async def host_update(self, host_id: str, fields: dict[str, Any]) -> ExecutorHost: ...

    async def host_get(self, host_id: str) -> ExecutorHost | None: ...

    async def host_get_by_name(self, name: str) -> ExecutorHost | None: ...

    async def host_list(self, active_only: bool = False) -> list[ExecutorHost]: ...

    async def host_record_health(self, host_id: str, healthy: bool) -> ExecutorHost: ...

    # executorHosts:adjustCount -- +1 (stops at max_concurrent_jobs) or -1 (stops at 0), in
    # one transaction. Job transitions move counts themselves; this is for callers that
    # hold slots by hand (ExecutorHost.increment_job_count / decrement_job_count).
    async def host_adjust_count(self, host_id: str, delta: int) -> ExecutorHost: ...

    # envTemplates:*
    async def template_create(self, template: EnvironmentVariableTemplate) -> None: ...

    async def template_update(
        self, template_id: str, fields: dict[str, Any]
    ) -> EnvironmentVariableTemplate: ...

    async def template_get(self, template_id: str) -> EnvironmentVariableTemplate | None: ...

    async def template_get_by_name(self, name: str) -> EnvironmentVariableTemplate | None: ...

    async def template_list(self) -> list[EnvironmentVariableTemplate]: ...


class WorkStore(Protocol):
    """Work-item operations (Convex module workItems; `workItems:claim` <-> `work_claim`).
    The values are in src/services/worker/models.py."""

    # workItems:enqueueBatch -- one transaction, at most MAX_WORK_BATCH items; returns ids.
    # An id given by the caller that exists already is Conflict (nothing is written).
    async def work_enqueue_batch(self, items: list[NewWorkItem]) -> list[str]: ...

    # workItems:claim -- pending items of `operations` (any operation when None) and running
    # ones whose lease expired, oldest first. An expired item that used up its attempts is
    # failed instead of claimed, so a poison item is never retried forever.
    async def work_claim(
        self, owner: str, operations: list[str] | None, limit: int, lease_s: float
    ) -> list[WorkItem]: ...

    # workItems:heartbeat -- renews the leases `owner` still holds; returns the ids it no
    # longer holds (finished, or claimed by another worker after expiry).
    async def work_heartbeat(
        self, owner: str, item_ids: list[str], lease_s: float
    ) -> list[str]: ...

    # workItems:report -- finishes items, at most MAX_WORK_BATCH per call, each applied once:
    # a key seen before is `duplicate`, an item already finished is `stale`. A report from a
    # worker whose lease expired still applies while the item is unfinished.
    async def work_report(self, reports: list[WorkReport]) -> list[ReportAck]: ...

    # workItems:release -- gives leases back; the items are claimable again at once.
    async def work_release(self, owner: str, item_ids: list[str]) -> None: ...

    # workItems:get
    async def work_get(self, item_id: str) -> WorkItem | None: ...

    # workItems:countByStatus
    async def work_count_by_status(self) -> dict[str, int]: ...

    # workItems:listLeases -- running items whose owner starts with `owner_prefix`.
    async def work_list_leases(self, owner_prefix: str, limit: int = 100) -> list[WorkItem]: ...
