"""The Store protocol: every state operation of the service, named after its Convex function.

`LocalStore` (SQLite) and `ConvexStore` (Convex HTTP API) implement the same methods with the
same semantics; the contract suite in tests/contract runs against both. Each method is one
transaction (one Convex mutation or query).
"""

from __future__ import annotations

from typing import Any, Protocol

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

    # bulkJobs:getJob
    async def get_job(self, job_id: str) -> Job | None: ...

    # bulkJobs:getUserJobs -- newest first, at most `limit` (<= MAX_PAGE).
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
