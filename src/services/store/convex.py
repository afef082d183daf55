"""ConvexStore: the Store protocol over the Convex HTTP API (POST /api/query|mutation).

One keep-alive `httpx.AsyncClient` with a bounded number of requests in flight (one client
fanned out to 50 concurrent requests collapses to a few hundred req/s with p99 near a second;
at 10 it stays fast), deploy-key auth so internal functions are reachable, Convex JSON values
decoded, ConvexError data mapped to the service's errors, and 429/5xx/connection errors
retried with jittered backoff before StoreUnavailable.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import random
import struct
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import httpx

from src.config import ConfigError, Settings
from src.services.domain import (
    ApiToken,
    BulkJobStatus,
    Export,
    Job,
    JobStats,
    NewJob,
    RateLimit,
    Stage,
    from_epoch,
)
from src.services.errors import (
    BulkJobError,
    Conflict,
    HostFull,
    NotFound,
    RateLimited,
    StoreAuthError,
    StoreError,
    StoreMisconfigured,
    StoreRateLimited,
    StoreUnavailable,
)
from src.services.metrics import StoreTimer
from src.services.store.base import MAX_PAGE
from src.services.store.convex_containers import ConvexContainerOps
from src.services.store.convex_work import ConvexWorkOps

log = logging.getLogger(__name__)

Kind = Literal["query", "mutation"]
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
MISSING_FUNCTION = "Could not find public function"


# -- Convex values ---------------------------------------------------------------------------


def decode(value: Any) -> Any:
    """Convex JSON format to Python: {"$integer": b64} -> int, {"$float": b64} -> float."""
    if isinstance(value, list):
        return [decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((key, encoded),) = value.items()
        if key == "$integer":
            return int.from_bytes(base64.b64decode(encoded), "little", signed=True)
        if key == "$float":
            return struct.unpack("<d", base64.b64decode(encoded))[0]
        if key == "$bytes":
            return base64.b64decode(encoded)
    return {key: decode(item) for key, item in value.items()}


def _ms(moment: datetime) -> float:
    return moment.timestamp() * 1000


def _dt(ms: float | None) -> datetime | None:
    return None if ms is None else from_epoch(ms / 1000)


def _present(args: Mapping[str, Any]) -> dict[str, Any]:
    """Convex optional arguments are absent, never null."""
    return {key: value for key, value in args.items() if value is not None}


def _stage(doc: dict[str, Any]) -> Stage:
    return Stage(
        name=doc["name"],
        index=doc["index"],
        status=doc["status"],
        progress=doc["progress"],
        items_total=doc.get("itemsTotal"),
        items_completed=doc["itemsCompleted"],
        items_failed=doc["itemsFailed"],
        started_at=_dt(doc.get("startedAt")),
        completed_at=_dt(doc.get("completedAt")),
        error_message=doc.get("errorMessage"),
        metadata=doc.get("metadata") or {},
    )


def _export(doc: dict[str, Any]) -> Export:
    return Export(
        id=doc["exportId"],
        job_id=doc["jobId"],
        user_id=doc["userId"],
        format=doc["format"],
        filename=doc["filename"],
        relative_path=doc["relativePath"],
        content_type=doc["contentType"],
        size_bytes=doc["sizeBytes"],
        sha256=doc["sha256"],
        created_at=from_epoch(doc["createdAt"] / 1000),
        expires_at=from_epoch(doc["expiresAt"] / 1000),
    )


def _job(doc: dict[str, Any]) -> Job:
    return Job(
        id=doc["jobId"],
        job_type=doc["jobType"],
        user_id=doc["userId"],
        status=doc["status"],
        priority=doc["priority"],
        job_data=doc.get("jobData") or {},
        results=doc.get("results") or {},
        estimated_duration_minutes=doc.get("estimatedDurationMinutes"),
        error_message=doc.get("errorMessage"),
        created_at=from_epoch(doc["createdAt"] / 1000),
        updated_at=from_epoch(doc["updatedAt"] / 1000),
        started_at=_dt(doc.get("startedAt")),
        completed_at=_dt(doc.get("completedAt")),
        lease_owner=doc.get("leaseOwner"),
        lease_expires_at=_dt(doc.get("leaseExpiresAt")),
        attempts=doc["attempts"],
        stages=[_stage(stage) for stage in doc.get("stages", [])],
        exports=[_export(export) for export in doc.get("exports", [])],
    )


def _error_from(path: str, body: dict[str, Any]) -> BulkJobError:
    """A Convex error response as one of the service's errors."""
    data = body.get("errorData")
    message = str(body.get("errorMessage") or "unknown error")
    if isinstance(data, dict):
        code, text = data.get("code"), str(data.get("message") or message)
        if code == "NOT_FOUND":
            return NotFound(text)
        if code == "CONFLICT":
            return Conflict(text)
        if code == "HOST_FULL":
            return HostFull(text)
        if code == "RATE_LIMITED":
            return RateLimited(int(data.get("retryAfterS", 1)), text)
    if MISSING_FUNCTION in message:
        return StoreMisconfigured(
            f"Convex function {path} is not deployed, or not visible without a valid"
            " CONVEX_DEPLOY_KEY (deploy convex/ with `npx convex deploy`)"
        )
    return StoreError(f"Convex function {path} failed: {message}")


class ConvexStore(ConvexContainerOps, ConvexWorkOps):
    """Store, ContainerStore and WorkStore over a Convex deployment's HTTP API."""

    def __init__(
        self,
        url: str,
        deploy_key: str | None = None,
        max_in_flight: int = 10,
        timeout_s: float = 10.0,
        retries: int = 5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Convex {deploy_key}"} if deploy_key else {}
        self._client = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            limits=httpx.Limits(
                max_connections=max_in_flight, max_keepalive_connections=max_in_flight
            ),
            transport=transport,
        )
        self._gate = asyncio.Semaphore(max_in_flight)
        self._retries = retries
        self.url = url

    # -- transport -------------------------------------------------------------------------

    async def _call(self, kind: Kind, path: str, args: Mapping[str, Any]) -> Any:
        payload = {"path": path, "args": _present(args), "format": "json"}
        for attempt in range(self._retries + 1):
            try:
                with StoreTimer("convex", path):
                    response = await self._send(kind, payload)
            except httpx.TransportError as exc:
                problem: str = f"{type(exc).__name__}: {exc}"
                delay = _backoff(attempt)
            else:
                if response.status_code not in RETRYABLE_STATUS:
                    return self._result(path, response)
                problem = f"HTTP {response.status_code}"
                delay = _retry_after(response) or _backoff(attempt)
            if attempt < self._retries:
                log.warning("convex %s %s: %s; retrying in %.2fs", kind, path, problem, delay)
                await asyncio.sleep(delay)
        message = f"Convex at {self.url} unavailable ({problem}) for {path}"
        if problem == "HTTP 429":  # the caller can wait as long as Convex asked
            raise StoreRateLimited(math.ceil(delay), message)
        raise StoreUnavailable(message)

    async def _send(self, kind: Kind, payload: dict[str, Any]) -> httpx.Response:
        async with self._gate:
            return await self._client.post(f"/api/{kind}", json=payload)

    def _result(self, path: str, response: httpx.Response) -> Any:
        if response.status_code in (401, 403):
            raise StoreAuthError(
                f"Convex refused the deploy key (HTTP {response.status_code});"
                " check CONVEX_DEPLOY_KEY"
            )
        try:
            body = response.json()
        except ValueError:
            raise StoreUnavailable(
                f"Convex answered {path} with HTTP {response.status_code}"
                " and a body that is not JSON"
            ) from None
        if response.status_code != 200 or not isinstance(body, dict):
            raise StoreMisconfigured(
                f"Convex rejected the call to {path}: HTTP {response.status_code} {body}"
            )
        if body.get("status") == "success":
            return decode(body.get("value"))
        if body.get("status") == "error":
            raise _error_from(path, body)
        raise StoreUnavailable(
            f"Convex answered {path} with an unknown status {body.get('status')!r}"
        )

    async def check(self) -> None:
        """Fail fast when the deployment is unreachable, refuses the key or lacks functions."""
        await self._call("query", "apiTokens:count", {})

    async def open(self) -> None:
        """Check the deployment, then make sure it has the default `local` executor host."""
        await self.check()
        await self.ensure_default_host()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> ConvexStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- jobs ------------------------------------------------------------------------------

    async def create(self, job: NewJob, limit: RateLimit) -> str:
        # The id is chosen here so that a create retried after a lost answer is recognisable.
        job_id = job.job_id or uuid.uuid4().hex
        args = {
            "jobType": job.job_type,
            "userId": job.user_id,
            "jobData": job.job_data,
            "stages": job.stages,
            "priority": job.priority,
            "estimatedDurationMinutes": job.estimated_duration_minutes,
            "jobId": job_id,
            "maxJobs": limit.max_jobs,
            "windowMs": limit.window_s * 1000,
        }
        try:
            return str(await self._call("mutation", "bulkJobs:create", args))
        except Conflict:
            if job.job_id is not None:
                raise
            # A random id already taken means our own earlier attempt was applied.
            return job_id

    async def update_status(
        self,
        job_id: str,
        status: BulkJobStatus,
        updates: dict[str, Any] | None = None,
        error_message: str | None = None,
    ) -> None:
        args = {
            "jobId": job_id,
            "status": str(status),
            "updates": updates,
            "errorMessage": error_message,
        }
        await self._call("mutation", "bulkJobs:updateStatus", args)

    async def start_stage(self, job_id: str, stage: str, items_total: int | None = None) -> None:
        args = {"jobId": job_id, "stage": str(stage), "itemsTotal": items_total}
        await self._call("mutation", "bulkJobs:startStage", args)

    async def update_stage_progress(
        self,
        job_id: str,
        stage: str,
        progress: float,
        items_completed: int | None = None,
        items_failed: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> BulkJobStatus:
        args = {
            "jobId": job_id,
            "stage": str(stage),
            "progress": progress,
            "itemsCompleted": items_completed,
            "itemsFailed": items_failed,
            "metadata": metadata,
        }
        return BulkJobStatus(await self._call("mutation", "bulkJobs:updateStageProgress", args))

    async def complete_stage(
        self,
        job_id: str,
        stage: str,
        items_completed: int | None = None,
        items_failed: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        args = {
            "jobId": job_id,
            "stage": str(stage),
            "itemsCompleted": items_completed,
            "itemsFailed": items_failed,
            "metadata": metadata,
        }
        await self._call("mutation", "bulkJobs:completeStage", args)

    async def fail_stage(
        self,
        job_id: str,
        stage: str,
        error_message: str,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        args = {
            "jobId": job_id,
            "stage": str(stage),
            "errorMessage": error_message,
            "metadata": metadata,
        }
        await self._call("mutation", "bulkJobs:failStage", args)

    async def add_export(self, export: Export) -> None:
        args = {
            "exportId": export.id,
            "jobId": export.job_id,
            "userId": export.user_id,
            "format": export.format,
            "filename": export.filename,
            "relativePath": export.relative_path,
            "contentType": export.content_type,
            "sizeBytes": export.size_bytes,
            "sha256": export.sha256,
            "createdAt": _ms(export.created_at),
            "expiresAt": _ms(export.expires_at),
        }
        await self._call("mutation", "bulkJobs:addExport", args)

    async def remove_export(self, export_id: str) -> bool:
        return bool(await self._call("mutation", "bulkJobs:removeExport", {"exportId": export_id}))

    async def claim(
        self,
        owner: str,
        lease_s: float,
        job_types: list[str],
        limit: int = 1,
        job_id: str | None = None,
    ) -> list[Job]:
        if not job_types or limit < 1:
            return []
        args = {
            "owner": owner,
            "leaseMs": lease_s * 1000,
            "jobTypes": job_types,
            "limit": min(limit, MAX_PAGE),
            "jobId": job_id,
        }
        return [_job(doc) for doc in await self._call("mutation", "bulkJobs:claim", args)]

    async def heartbeat(self, job_id: str, owner: str, lease_s: float) -> BulkJobStatus:
        args = {"jobId": job_id, "owner": owner, "leaseMs": lease_s * 1000}
        return BulkJobStatus(await self._call("mutation", "bulkJobs:heartbeat", args))

    async def release(self, job_id: str, owner: str) -> None:
        await self._call("mutation", "bulkJobs:release", {"jobId": job_id, "owner": owner})

    async def get_job(self, job_id: str) -> Job | None:
        doc = await self._call("query", "bulkJobs:getJobInternal", {"jobId": job_id})
        return None if doc is None else _job(doc)

    async def get_user_jobs(
        self,
        user_id: str,
        status: BulkJobStatus | None = None,
        job_type: str | None = None,
        limit: int = 10,
    ) -> list[Job]:
        args = {
            "userId": user_id,
            "status": str(status) if status else None,
            "jobType": job_type,
            "limit": max(1, min(limit, MAX_PAGE)),
        }
        docs = await self._call("query", "bulkJobs:getUserJobsInternal", args)
        return [_job(doc) for doc in docs]

    async def get_user_recent_jobs(self, user_id: str, window_s: float) -> list[Job]:
        args = {"userId": user_id, "windowMs": window_s * 1000}
        return [_job(doc) for doc in await self._call("query", "bulkJobs:getUserRecentJobs", args)]

    async def get_export(self, export_id: str) -> Export | None:
        doc = await self._call("query", "bulkJobs:getExport", {"exportId": export_id})
        return None if doc is None else _export(doc)

    async def get_expired_exports(self, limit: int = 100) -> list[Export]:
        args = {"limit": max(1, min(limit, MAX_PAGE))}
        return [
            _export(doc) for doc in await self._call("query", "bulkJobs:getExpiredExports", args)
        ]

    async def get_job_stats(self) -> JobStats:
        stats = await self._call("query", "bulkJobs:getJobStats", {})
        return JobStats(
            total_jobs=stats["totalJobs"],
            by_status=stats["byStatus"],
            by_type=stats["byType"],
            exports=stats["exports"],
            export_bytes=stats["exportBytes"],
        )

    # -- tokens ----------------------------------------------------------------------------

    async def create_token(self, token_hash: str, user_id: str, is_admin: bool, name: str) -> None:
        args = {"tokenHash": token_hash, "userId": user_id, "isAdmin": is_admin, "name": name}
        await self._call("mutation", "apiTokens:create", args)

    async def get_token(self, token_hash: str) -> ApiToken | None:
        doc = await self._call("query", "apiTokens:getByHash", {"tokenHash": token_hash})
        if doc is None:
            return None
        return ApiToken(
            user_id=doc["userId"],
            is_admin=doc["isAdmin"],
            name=doc["name"],
            created_at=from_epoch(doc["createdAt"] / 1000),
        )

    async def count_tokens(self) -> int:
        return int(await self._call("query", "apiTokens:count", {}))


def _backoff(attempt: int) -> float:
    """Exponential backoff with full jitter, so many workers do not retry in step."""
    return random.uniform(0, min(5.0, 0.1 * 2**attempt))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return min(30.0, max(0.0, float(value))) if value else None
    except ValueError:
        return None


async def open_convex_store(settings: Settings) -> ConvexStore:
    """The Convex store of the settings, checked to answer before the service starts."""
    if not settings.convex_url:
        raise ConfigError("BULKJOBS_STORE=convex needs CONVEX_URL")
    store = ConvexStore(settings.convex_url, settings.convex_deploy_key, retries=2)
    try:
        await store.open()
    except BulkJobError as exc:
        await store.aclose()
        raise ConfigError(f"CONVEX_URL={settings.convex_url}: {exc}") from exc
    return store
