"""The Store protocol: every state operation of the service, named after its Convex function.

`Store` is what `open_store` returns: the bulk job operations (`JobStore`), the container
operations (`ContainerStore`), the work-item operations (`WorkStore`) and the webhook
operations (`WebhookStore`) in one type.
`LocalStore` (SQLite) and `ConvexStore` (Convex HTTP API) implement all of them with the same
semantics; the contract suite in tests/contract runs against both. Each method is one
transaction (one Convex mutation or query).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from src.services.domain import (
    ApiToken,
    BulkJobStatus,
    ClaimRules,
    Export,
    Failure,
    Job,
    JobDeletion,
    JobStats,
    NewJob,
    RateLimit,
)
from src.services.domain.containers import (
    MAX_HEALTH_FAILURES,
    ContainerJob,
    ContainerQuota,
    EnvironmentVariableTemplate,
    ExecutorHost,
    ExecutorType,
)
from src.services.domain.webhooks import (
    AttemptResult,
    ClaimedDelivery,
    DeliveryRules,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
)
from src.services.domain.work import NewWorkItem, ReportAck, WorkItem, WorkReport
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
    "ContainerStore",
    "JobStore",
    "NotFound",
    "RateLimited",
    "Store",
    "StoreUnavailable",
    "WebhookStore",
    "WorkStore",
]

#: Upper bound of any list a store returns in one call.
MAX_PAGE = 200


class JobStore(Protocol):
    """Bulk job, export and token operations (Convex modules bulkJobs and apiTokens); each
    is atomic. Times are the store's own clock."""

    # bulkJobs:create -- checks the user's rate limit in the same transaction; no limit when
    # `limit` is None (an admin's job).
    async def create(self, job: NewJob, limit: RateLimit | None) -> str: ...

    # bulkJobs:updateStatus -- merges `updates` into the job's results.
    async def update_status(
        self,
        job_id: str,
        status: BulkJobStatus,
        updates: dict[str, Any] | None = None,
        error_message: str | None = None,
    ) -> None: ...

    # Jobs follow their stages, in the same transaction as the stage change: starting a stage
    # moves a pending or running job to initializing, processing or exporting (by the stage)
    # and records it as the current stage; a fatal stage failure fails the job with the
    # stage's error; when no stage is left to run (all completed, skipped or failed without
    # being fatal) the job is completed. A stage call on an ended job is a Conflict.

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

    # bulkJobs:failStage -- fatal=False fails the stage only; the job keeps running.
    async def fail_stage(
        self,
        job_id: str,
        stage: str,
        error_message: str,
        metadata: dict[str, Any] | None = None,
        fatal: bool = True,
    ) -> None: ...

    # bulkJobs:addExport -- idempotent by id: the same id again replaces the record
    # (Conflict when that id is another job's export). With `max_user_bytes`, in the same
    # transaction: ExportQuotaExceeded (nothing written) when the bytes of the owner's
    # unexpired exports, this one included (a replaced record counted once), would pass it.
    async def add_export(self, export: Export, max_user_bytes: int | None = None) -> None: ...

    # bulkJobs:getUserExportBytes -- bytes of the user's unexpired exports.
    async def get_user_export_bytes(self, user_id: str) -> int: ...

    # bulkJobs:removeExport -- True when a record was removed.
    async def remove_export(self, export_id: str) -> bool: ...

    # bulkJobs:claim -- pending jobs of `job_types` and running jobs whose lease expired.
    # Users take turns: each round gives every waiting user one job (highest priority, then
    # oldest), users with fewer running jobs first, and a user holding
    # `rules.max_running_per_user` running jobs gets none. A running job whose lease expired
    # after `rules.max_attempts` claims is failed with its last error instead. Jobs driven by
    # hand (active, never leased) and jobs of other types are never claimed.
    async def claim(
        self,
        owner: str,
        lease_s: float,
        job_types: list[str],
        limit: int = 1,
        job_id: str | None = None,
        rules: ClaimRules | None = None,
    ) -> list[Job]: ...

    # bulkJobs:heartbeat -- renews the lease; Conflict when the lease was lost.
    async def heartbeat(self, job_id: str, owner: str, lease_s: float) -> BulkJobStatus: ...

    # bulkJobs:release -- gives the lease up (a finished job keeps no lease). Without a
    # failure: a hand-back, the claim does not count and the job is claimable again at once.
    # With one: a failed attempt, kept as the job's last error; the job is claimable again
    # after `failure.retry_in_s`, or failed with the error once its attempts are used up.
    async def release(self, job_id: str, owner: str, failure: Failure | None = None) -> None: ...

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

    # bulkJobs:getJobIdsByPrefix -- ids that start with `prefix` (only `user_id`'s when
    # given), in id order, at most `limit` (<= MAX_PAGE): resolves a shortened id.
    async def get_job_ids_by_prefix(
        self, prefix: str, user_id: str | None = None, limit: int = 10
    ) -> list[str]: ...

    # bulkJobs:getUserRecentJobs -- jobs created within the last `window_s` seconds.
    async def get_user_recent_jobs(self, user_id: str, window_s: float) -> list[Job]: ...

    # bulkJobs:getExport
    async def get_export(self, export_id: str) -> Export | None: ...

    # bulkJobs:getExpiredExports
    async def get_expired_exports(self, limit: int = 100) -> list[Export]: ...

    # bulkJobs:getJobStats
    async def get_job_stats(self) -> JobStats: ...

    # bulkJobs:deleteJob -- deletes a finished job that no runner holds, in steps that each
    # stay a small transaction: up to `limit` of its container jobs per call (unfinished
    # ones too, freeing their host slots), then up to `limit` of its exports, and once
    # neither is left its stages and the job itself (`done`). Callers repeat until done.
    # NotFound when there is no such job; Conflict, naming why, when it has not finished or
    # its runner still holds it.
    async def delete_job(self, job_id: str, limit: int = 100) -> JobDeletion: ...

    # bulkJobs:getFinishedBefore -- ids of jobs that finished (completed, failed, cancelled)
    # before `before`, oldest first, at most `limit` (<= MAX_PAGE): what retention deletes.
    async def get_finished_before(self, before: datetime, limit: int = 100) -> list[str]: ...

    # apiTokens:create -- `expires_at` None: the token never expires.
    async def create_token(
        self,
        token_hash: str,
        user_id: str,
        is_admin: bool,
        name: str,
        expires_at: datetime | None = None,
    ) -> None: ...

    # apiTokens:getByHash -- revoked and expired tokens too (the caller says why it refuses).
    async def get_token(self, token_hash: str) -> ApiToken | None: ...

    # apiTokens:list -- newest first (only `user_id`'s when given), at most `limit`
    # (<= MAX_PAGE); never the hashes.
    async def list_tokens(self, user_id: str | None = None, limit: int = 100) -> list[ApiToken]: ...

    # apiTokens:revoke -- by token id; the token as revoked (a second revocation keeps the
    # first time). NotFound when no token has that id.
    async def revoke_token(self, token_id: str) -> ApiToken: ...

    # apiTokens:count
    async def count_tokens(self) -> int: ...

    async def aclose(self) -> None: ...


class ContainerStore(Protocol):
    """Container job, executor host and template operations (Convex modules containerJobs,
    executorHosts and envTemplates; `containerJobs:create` <-> `container_create`)."""

    # containerJobs:create / createBatch -- a batch is one transaction. With `quota`, each
    # owner's unfinished jobs are counted in it (see ContainerQuota): over the cap is
    # ContainerQuotaExceeded and nothing is written.
    async def container_create(
        self, job: ContainerJob, quota: ContainerQuota | None = None
    ) -> None: ...

    async def container_create_batch(
        self, jobs: list[ContainerJob], quota: ContainerQuota | None = None
    ) -> None: ...

    # containerJobs:createCopies -- copies of `job` under each of `job_ids` (at most 500), in
    # one transaction: what bulk creation writes, sent and encoded once.
    async def container_create_copies(
        self, job: ContainerJob, job_ids: list[str], quota: ContainerQuota | None = None
    ) -> None: ...

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

    # containerJobs:getIdsByPrefix -- ids that start with `prefix` (only `created_by`'s when
    # given), in id order, at most `limit` (<= MAX_PAGE): resolves a shortened id.
    async def container_get_ids_by_prefix(
        self, prefix: str, created_by: str | None = None, limit: int = 10
    ) -> list[str]: ...

    # containerJobs:claim -- unfinished jobs whose processor's lease expired, and pending
    # jobs on hosts with a free slot (a full host's backlog is not read: waiting costs
    # nothing), users taking turns: one job per waiting user per round, users with less work
    # in hand first. `bulk_job_id` claims only that bulk job's jobs. A job whose processor
    # died holding it `rules.max_attempts` times is failed with its last error instead.
    async def container_claim(
        self,
        owner: str,
        lease_s: float,
        limit: int,
        bulk_job_id: str | None = None,
        rules: ClaimRules | None = None,
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
        self, job_ids: list[str], host_id: str, executor_type: ExecutorType
    ) -> tuple[list[str], dict[str, str]]: ...

    # containerJobs:removeFinishedBefore -- deletes up to `limit` finished jobs created before
    # `before`; returns how many. Callers loop until 0.
    async def container_remove_finished_before(self, before: datetime, limit: int) -> int: ...

    # containerJobs:countByStatus
    async def container_count_by_status(self) -> dict[str, int]: ...

    # containerJobs:heartbeat -- renews the lease; Conflict when it was lost.
    async def container_heartbeat(self, job_id: str, owner: str, lease_s: float) -> str: ...

    # containerJobs:release -- as bulkJobs:release: without a failure a hand-back (claimable
    # at once, no attempt used); with one a failed attempt, claimable after its back-off or,
    # once the attempts are used up, failed with its error. Returns the job's status.
    async def container_release(
        self, job_id: str, owner: str, failure: Failure | None = None
    ) -> str: ...

    # containerJobs:remove -- finished jobs only unless forced; returns the ids removed.
    async def container_remove(self, job_ids: list[str], force: bool = False) -> list[str]: ...

    # executorHosts:*
    async def host_create(self, host: ExecutorHost) -> None: ...

    async def host_update(self, host_id: str, fields: dict[str, Any]) -> ExecutorHost: ...

    async def host_get(self, host_id: str) -> ExecutorHost | None: ...

    async def host_get_by_name(self, name: str) -> ExecutorHost | None: ...

    async def host_list(self, active_only: bool = False) -> list[ExecutorHost]: ...

    # executorHosts:recordHealth -- one probe's (or, with probe=False, one failed launch's)
    # result, in one transaction: success resets the failures and marks the host healthy;
    # a failure adds one and keeps `error`, and the host is unhealthy once the failures
    # reach `threshold`. Only probes move last_health_check.
    async def host_record_health(
        self,
        host_id: str,
        healthy: bool,
        error: str | None = None,
        threshold: int = MAX_HEALTH_FAILURES,
        probe: bool = True,
    ) -> ExecutorHost: ...

    # executorHosts:claimProbes -- up to `limit` active hosts whose next probe is due (never
    # probed first, then the longest due), each moved `interval_s` on in the same
    # transaction, so that many workers probe each host once per interval between them.
    async def host_claim_probes(self, interval_s: float, limit: int) -> list[ExecutorHost]: ...

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
    The values are in src/services/domain/work.py."""

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


class WebhookStore(Protocol):
    """Webhook endpoints and their deliveries (Convex module webhooks; `webhooks:claim` <->
    `webhook_claim`). The values are in src/services/domain/webhooks.py.

    Deliveries are written by the job, stage, export and container job operations above, in
    their own transaction (one per active endpoint that wants the event: its owner's, or
    one registered for all users); these operations carry them to the receivers."""

    # webhooks:create -- Conflict past MAX_ENDPOINTS_PER_USER endpoints of one user.
    async def webhook_create(self, endpoint: WebhookEndpoint) -> None: ...

    # webhooks:get
    async def webhook_get(self, endpoint_id: str) -> WebhookEndpoint | None: ...

    # webhooks:list -- one user's endpoints (everyone's when None), oldest first, bounded.
    async def webhook_list(self, user_id: str | None = None) -> list[WebhookEndpoint]: ...

    # webhooks:remove -- the endpoint and its deliveries; True when it existed.
    async def webhook_remove(self, endpoint_id: str) -> bool: ...

    # webhooks:enable -- active again, its failure record cleared; NotFound if missing.
    async def webhook_enable(self, endpoint_id: str) -> WebhookEndpoint: ...

    # webhooks:claim -- due deliveries (pending ones whose next attempt has come, delivering
    # ones whose lease expired: their worker died), oldest due first, each under a lease and
    # with one more attempt counted. Due deliveries of a disabled endpoint, and those past
    # `rules.retry_window_s` after their event, are failed instead; those of a removed
    # endpoint are dropped.
    async def webhook_claim(
        self, owner: str, lease_s: float, limit: int, rules: DeliveryRules
    ) -> list[ClaimedDelivery]: ...

    # webhooks:heartbeat -- renews the lease; the status when finished meanwhile; Conflict
    # when the lease was lost.
    async def webhook_heartbeat(
        self, delivery_id: str, owner: str, lease_s: float
    ) -> DeliveryStatus: ...

    # webhooks:report -- the outcome of one attempt. A success finishes the delivery (even
    # from a worker whose lease expired) and clears the endpoint's failure record. A failure
    # from the lease holder schedules the next attempt after `result.retry_in_s`, or fails the
    # delivery when that falls past the retry window; an endpoint failing for
    # `rules.disable_after_s` without a success, or answering 410, is disabled with its
    # reason. Returns the delivery's status; NotFound when it no longer exists.
    async def webhook_report(
        self, delivery_id: str, owner: str, result: AttemptResult, rules: DeliveryRules
    ) -> DeliveryStatus: ...

    # webhooks:release -- hands a lease back (a worker stopping): due at once, no attempt.
    async def webhook_release(self, delivery_id: str, owner: str) -> None: ...

    # webhooks:listDeliveries -- an endpoint's deliveries, newest first, at most `limit`
    # (<= MAX_DELIVERY_PAGE).
    async def webhook_deliveries(
        self, endpoint_id: str, status: DeliveryStatus | None = None, limit: int = 50
    ) -> list[WebhookDelivery]: ...


class Store(JobStore, ContainerStore, WorkStore, WebhookStore, Protocol):
    """Every operation of the service's state: what `open_store` returns."""
