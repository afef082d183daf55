"""ConvexStore: the Store protocol over the Convex HTTP API (POST /api/query|mutation).

One keep-alive `httpx.AsyncClient` with a bounded number of requests in flight (one client
fanned out to 50 concurrent requests collapses to a few hundred req/s with p99 near a second;
at 10 it stays fast), deploy-key auth so internal functions are reachable, values in Convex's
encoded JSON (the format both official clients ask for), every answer read by
`read_answer`, and 429/5xx/connection errors retried with jittered backoff.

How the backend answers, and what each answer becomes (the recorded shapes, with where each
comes from, are the fixtures of tests/unit/test_convex_store_http.py):

| answer | becomes |
| --- | --- |
| 200 or 560, `{status: "success", value}` | the value |
| 200 or 560, `{status: "error", errorData: {code}}` | NotFound, Conflict, HostFull, RateLimited |
| 200 or 560, `{status: "error"}`, a missing function | StoreMisconfigured |
| 200 or 560, `{status: "error"}`, anything else | StoreError naming the function |
| 401 / 403 `{code, message}` | StoreAuthError |
| 404 `{code, message}`, 3xx | StoreMisconfigured |
| 429 | retried, honouring Retry-After; then StoreRateLimited |
| 5xx other than 560, connection errors | retried; then StoreUnavailable |
| other 4xx `{code, message}` (BadJsonBody, BadFormat, ...) | StoreError naming the function |

560 is the hosted backend's status for a function that threw (`STATUS_CODE_UDF_FAILED` in
convex/browser's http_client.js, which reads it as a normal answer); the open-source backend
sends the same body with 200. Neither is ever an outage.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import struct
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import httpx

from src.config import ConfigError, Settings
from src.services.backoff import backoff
from src.services.domain import (
    BulkJobStatus,
    ClaimRules,
    Export,
    Failure,
    Job,
    JobDeletion,
    JobStats,
    NewJob,
    RateLimit,
    Stage,
    from_epoch,
)
from src.services.errors import (
    BulkJobError,
    Conflict,
    ContainerQuotaExceeded,
    ExportQuotaExceeded,
    HostFull,
    NotFound,
    QuotaExceeded,
    RateLimited,
    StoreAuthError,
    StoreError,
    StoreMisconfigured,
    StoreRateLimited,
    StoreUnavailable,
)
from src.services.metrics import StoreTimer
from src.services.store.base import MAX_PAGE
from src.services.store.convex_containers import ConvexContainerOps, failure_args
from src.services.store.convex_tokens import ConvexTokenOps
from src.services.store.convex_webhooks import ConvexWebhookOps
from src.services.store.convex_work import ClaimRefs, ConvexWorkOps

log = logging.getLogger(__name__)

Kind = Literal["query", "mutation"]
#: The hosted backend's status for a function that threw; its body is a normal answer.
UDF_FAILED = 560
FUNCTION_ANSWER = frozenset({200, UDF_FAILED})
MISSING_FUNCTION = "Could not find public function"
#: The value format asked for: lossless, and what both official clients send.
FORMAT = "convex_encoded_json"
#: Integers a float64 holds exactly; such floats are read back as ints (see `decode`).
EXACT_INT = 2**53


def retryable(status: int) -> bool:
    """429 and 5xx are worth retrying; 560 is a function's own answer, not an outage."""
    return status == 429 or (500 <= status < 600 and status != UDF_FAILED)


def encode(value: Any) -> Any:
    """Python to Convex JSON as convexToJson writes it: NaN and infinities as {"$float"}
    (plain JSON has no spelling for them), bytes as {"$bytes"}."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": base64.b64encode(struct.pack("<d", value)).decode()}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, Mapping):
        return {key: encode(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [encode(item) for item in value]
    return value


def decode(value: Any) -> Any:
    """Convex JSON to Python: {"$integer": b64} -> int, {"$float": b64} -> float, {"$bytes"}.

    Every plain number in an answer is a float64, which the backend writes as `3.0`; one that
    holds an integer exactly comes back as an int, as a JavaScript client sees one number
    type and as LocalStore returns the ints it was given (counts, indexes, job data).
    """
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) <= EXACT_INT else value
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


def read_answer(path: str, response: httpx.Response) -> Any:
    """One answer of the Convex HTTP API as a value, or raised as one of the service's errors.

    The only place that reads a Convex answer; `_call` decides only whether to retry first.
    """
    body = _json_or_none(response)
    if response.status_code in FUNCTION_ANSWER and isinstance(body, dict) and "status" in body:
        return _function_result(path, body)
    raise _http_error(path, response, body)


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _function_result(path: str, body: dict[str, Any]) -> Any:
    if body["status"] == "success":
        return decode(body.get("value"))
    if body["status"] == "error":
        raise _error_from(path, body)
    raise StoreUnavailable(f"Convex answered {path} with an unknown status {body['status']!r}")


QUOTA_ERRORS: dict[str, type[QuotaExceeded]] = {
    "EXPORT_QUOTA": ExportQuotaExceeded,
    "CONTAINER_QUOTA": ContainerQuotaExceeded,
}


def _error_from(path: str, body: dict[str, Any]) -> BulkJobError:
    """A function's error answer as one of the service's errors, by its ConvexError code."""
    data = decode(body.get("errorData"))
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
        if code in QUOTA_ERRORS:
            maximum, usage, requested = (
                int(data.get(key) or 0) for key in ("maximum", "usage", "requested")
            )
            return QUOTA_ERRORS[code](str(data.get("userId") or ""), maximum, usage, requested)
    if MISSING_FUNCTION in message:
        return _missing_function(path)
    return StoreError(f"Convex function {path} failed: {message}")


def _missing_function(path: str) -> StoreMisconfigured:
    return StoreMisconfigured(
        f"Convex function {path} is not deployed, or not visible without a valid"
        " CONVEX_DEPLOY_KEY (deploy convex/ with `npx convex deploy`)"
    )


def _http_error(path: str, response: httpx.Response, body: Any) -> BulkJobError:
    """A 4xx/5xx `{code, message}` answer (or a body that is no Convex answer at all)."""
    status = response.status_code
    said = _backend_said(status, body)
    if status in (401, 403):
        return StoreAuthError(f"Convex refused the deploy key ({said}); check CONVEX_DEPLOY_KEY")
    if status == 404 and isinstance(body, dict) and body.get("code") == "FunctionPathNotFound":
        return _missing_function(path)
    if status == 404 or 300 <= status < 400:  # a redirect: not the deployment's own URL
        return StoreMisconfigured(
            f"Convex has no HTTP API at {response.url} ({said}); CONVEX_URL must be the"
            " deployment URL, https://<deployment>.convex.cloud"
        )
    if status == 429:
        return StoreRateLimited(math.ceil(_retry_after(response) or 1), f"Convex {said} for {path}")
    if status >= 500 or status in FUNCTION_ANSWER:
        return StoreUnavailable(f"Convex at {response.url.host} unavailable ({said}) for {path}")
    return StoreError(f"Convex refused the call to {path}: {said}")


def _backend_said(status: int, body: Any) -> str:
    """`HTTP 400 BadJsonBody: <message>`, or what can be said of a body that is not JSON."""
    if isinstance(body, dict) and ("code" in body or "message" in body):
        code = f" {body['code']}" if body.get("code") else ""
        return f"HTTP {status}{code}: {body.get('message', '')}"
    if body is None:
        return f"HTTP {status} and a body that is not JSON"
    return f"HTTP {status}"


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
        current_stage=doc.get("currentStage"),
        last_error=doc.get("lastError"),
        retry_of=doc.get("retryOf"),
        stages=[_stage(stage) for stage in doc.get("stages", [])],
        exports=[_export(export) for export in doc.get("exports", [])],
    )


class ConvexStore(ConvexContainerOps, ConvexWorkOps, ConvexTokenOps, ConvexWebhookOps):
    """Store, ContainerStore, WorkStore and WebhookStore over a Convex deployment's HTTP API."""

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
        self._claim_refs = ClaimRefs()
        self.url = url

    async def _call(self, kind: Kind, path: str, args: Mapping[str, Any]) -> Any:
        payload = {"path": path, "args": encode(_present(args)), "format": FORMAT}
        last: httpx.Response | None = None
        for attempt in range(self._retries + 1):
            try:
                with StoreTimer("convex", path):
                    response = await self._send(kind, payload)
            except httpx.TransportError as exc:
                last, problem = None, f"{type(exc).__name__}: {exc}"
                delay = backoff(attempt, cap_s=5.0)
            else:
                if not retryable(response.status_code):
                    return read_answer(path, response)
                last, problem = response, f"HTTP {response.status_code}"
                delay = _retry_after(response) or backoff(attempt, cap_s=5.0)
            if attempt < self._retries:
                log.warning("convex %s %s: %s; retrying in %.2fs", kind, path, problem, delay)
                await asyncio.sleep(delay)
        if last is not None:  # the last answer's own error: StoreRateLimited or StoreUnavailable
            return read_answer(path, last)
        raise StoreUnavailable(f"Convex at {self.url} unavailable ({problem}) for {path}")

    async def _send(self, kind: Kind, payload: dict[str, Any]) -> httpx.Response:
        async with self._gate:
            return await self._client.post(f"/api/{kind}", json=payload)

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

    async def create(self, job: NewJob, limit: RateLimit | None) -> str:
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
            "retryOf": job.retry_of,
            "maxJobs": None if limit is None else limit.max_jobs,
            "windowMs": None if limit is None else limit.window_s * 1000,
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
        fatal: bool = True,
    ) -> None:
        args = {
            "jobId": job_id,
            "stage": str(stage),
            "errorMessage": error_message,
            "metadata": metadata,
            "fatal": fatal,
        }
        await self._call("mutation", "bulkJobs:failStage", args)

    async def add_export(self, export: Export, max_user_bytes: int | None = None) -> None:
        args = {
            "maxUserBytes": max_user_bytes,
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

    async def get_user_export_bytes(self, user_id: str) -> int:
        return int(await self._call("query", "bulkJobs:getUserExportBytes", {"userId": user_id}))

    async def remove_export(self, export_id: str) -> bool:
        return bool(await self._call("mutation", "bulkJobs:removeExport", {"exportId": export_id}))

    async def claim(
        self,
        owner: str,
        lease_s: float,
        job_types: list[str],
        limit: int = 1,
        job_id: str | None = None,
        rules: ClaimRules | None = None,
    ) -> list[Job]:
        if not job_types or limit < 1:
            return []
        rules = rules or ClaimRules()
        args = {
            "owner": owner,
            "leaseMs": lease_s * 1000,
            "jobTypes": job_types,
            "limit": min(limit, MAX_PAGE),
            "jobId": job_id,
            "maxAttempts": rules.max_attempts,
            "maxRunningPerUser": rules.max_running_per_user,
        }
        return [_job(doc) for doc in await self._call("mutation", "bulkJobs:claim", args)]

    async def heartbeat(self, job_id: str, owner: str, lease_s: float) -> BulkJobStatus:
        args = {"jobId": job_id, "owner": owner, "leaseMs": lease_s * 1000}
        return BulkJobStatus(await self._call("mutation", "bulkJobs:heartbeat", args))

    async def release(self, job_id: str, owner: str, failure: Failure | None = None) -> None:
        args = {"jobId": job_id, "owner": owner} | failure_args(failure)
        await self._call("mutation", "bulkJobs:release", args)

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

    async def get_job_ids_by_prefix(
        self, prefix: str, user_id: str | None = None, limit: int = 10
    ) -> list[str]:
        args = {"prefix": prefix, "userId": user_id, "limit": limit}
        return list(await self._call("query", "bulkJobs:getJobIdsByPrefix", args))

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

    async def delete_job(self, job_id: str, limit: int = 100) -> JobDeletion:
        args = {"jobId": job_id, "limit": max(1, min(limit, 500))}
        done = await self._call("mutation", "bulkJobs:deleteJob", args)
        return JobDeletion(
            done=done["done"],
            container_jobs=done["containerJobs"],
            stages=done["stages"],
            exports=done["exports"],
        )

    async def get_finished_before(self, before: datetime, limit: int = 100) -> list[str]:
        args = {"before": _ms(before), "limit": max(1, min(limit, MAX_PAGE))}
        return list(await self._call("query", "bulkJobs:getFinishedBefore", args))


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
