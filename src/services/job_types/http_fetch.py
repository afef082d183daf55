"""Built-in job type `http_fetch`: fetch a list of URLs and export what came back.

Stages: initialization (check the URLs), content_fetch (httpx under bounded concurrency with
per-item retries, through the fetch policy; bodies streamed to files under the job's folder,
each within BULKJOBS_HTTP_FETCH_MAX_BODY_BYTES and all within the job's byte budget),
content_processing (status, content type, size, sha256 and HTML title per URL),
export_generation (CSV, JSON, or ZIP with the bodies). A URL that fails -- refused by the
policy, too large, over the budget, unreachable -- is a failed item whose error says why,
never fatal to the job. A retry of the failed items fetches the failed URLs again, with the
job's other settings.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError

from src.config import Settings
from src.services.domain import BulkJobStage, Job
from src.services.errors import Conflict, InvalidInput
from src.services.fetch_policy import FetchPolicy, FetchRefused, fetch_client
from src.services.runner import (
    StageContext,
    StageRetryPolicy,
    StageServices,
    read_stage_output,
    recorded_failed_items,
)

NAME = "http_fetch"
STAGES = [
    BulkJobStage.INITIALIZATION,
    BulkJobStage.CONTENT_FETCH,
    BulkJobStage.CONTENT_PROCESSING,
    BulkJobStage.EXPORT_GENERATION,
]
TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
#: How much of a body is searched for its HTML title.
TITLE_WINDOW = 256 * 1024
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class HttpFetchData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    urls: list[HttpUrl] = Field(min_length=1, max_length=10_000)
    concurrency: int = Field(8, ge=1, le=64)
    timeout_s: float = Field(10, gt=0, le=120)
    retries: int = Field(2, ge=0, le=5)
    export_format: Literal["csv", "json", "zip"] = "csv"
    #: A body larger than this fails its item (at most BULKJOBS_HTTP_FETCH_MAX_BODY_BYTES).
    max_body_bytes: int | None = Field(None, ge=1)


class _ItemFailed(Exception):
    """This URL's item fails for good (no retry); the message is its error."""


class ByteBudget:
    """Bytes of bodies one job may keep; taken as they stream, given back when dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> None:
        if self.used + size > self.limit:
            raise _ItemFailed(
                f"the job's budget of {self.limit} bytes of bodies"
                " (BULKJOBS_HTTP_FETCH_MAX_JOB_BYTES) is spent; nothing was kept"
            )
        self.used += size

    def give_back(self, size: int) -> None:
        self.used -= size


class _Limits:
    def __init__(self, data: HttpFetchData, settings: Settings) -> None:
        ceiling = settings.bulkjobs_http_fetch_max_body_bytes
        self.body = min(data.max_body_bytes or ceiling, ceiling)
        named = self.body < ceiling
        self.setting = "job_data.max_body_bytes" if named else "BULKJOBS_HTTP_FETCH_MAX_BODY_BYTES"
        self.budget = ByteBudget(settings.bulkjobs_http_fetch_max_job_bytes)

    def too_large(self) -> _ItemFailed:
        return _ItemFailed(f"the body exceeds {self.body} bytes ({self.setting}); nothing was kept")


def validate(job_data: dict[str, Any]) -> dict[str, Any]:
    try:
        parsed = HttpFetchData.model_validate(job_data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidInput(f"job_data.{where}", first["msg"]) from None
    return parsed.model_dump(mode="json")


def _bodies_dir(ctx: StageContext) -> Path:
    return ctx.manager.settings.bulk_export_path / ctx.job_id / "bodies"


async def initialize(ctx: StageContext) -> dict[str, Any]:
    data = HttpFetchData.model_validate(ctx.job_data)
    await ctx.start(len(data.urls))
    _bodies_dir(ctx).mkdir(parents=True, exist_ok=True)
    await ctx.report(len(data.urls), total=len(data.urls))
    return {"urls": len(data.urls)}


async def fetch(ctx: StageContext) -> list[dict[str, Any]]:
    data = HttpFetchData.model_validate(ctx.job_data)
    total = len(data.urls)
    await ctx.start(total)
    counts = {"done": 0, "failed": 0}
    gate = asyncio.Semaphore(data.concurrency)
    limits = _Limits(data, ctx.manager.settings)
    policy = FetchPolicy.from_settings(ctx.manager.settings)
    async with fetch_client(policy, httpx.Timeout(data.timeout_s)) as client:

        async def one(index: int, url: str) -> dict[str, Any]:
            async with gate:
                body_path = _bodies_dir(ctx) / str(index)
                row = await _fetch_with_retries(client, url, data, limits, body_path)
            counts["failed" if row["error"] else "done"] += 1
            if row["error"]:
                ctx.item_failed(url, row["error"])
            await ctx.report(counts["done"], counts["failed"], total)
            return row

        return await asyncio.gather(*(one(i, str(url)) for i, url in enumerate(data.urls)))


async def _fetch_with_retries(
    client: httpx.AsyncClient, url: str, data: HttpFetchData, limits: _Limits, body_path: Path
) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for attempt in range(data.retries + 1):
        row = await _fetch_once(client, url, limits, body_path)
        row["attempts"] = attempt + 1
        if not row.pop("retry", False):
            break
        await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
    return row


async def _fetch_once(
    client: httpx.AsyncClient, url: str, limits: _Limits, body_path: Path
) -> dict[str, Any]:
    started = time.perf_counter()
    row: dict[str, Any] = {"url": url, "status": None, "content_type": None, "error": None}
    try:
        async with client.stream("GET", url) as response:
            row.update(
                status=response.status_code, content_type=response.headers.get("content-type")
            )
            size, sha256 = await _save_body(response, body_path, limits)
    except (FetchRefused, _ItemFailed) as exc:
        row.update(error=str(exc))
    except httpx.HTTPError as exc:
        row.update(error=f"{type(exc).__name__}: {exc}".rstrip(": "), retry=True)
    except OSError as exc:  # the body could not be stored (a full disk, say)
        row.update(error=f"the body could not be stored: {exc.strerror or exc}")
    else:
        row.update(body_file=body_path.name, size_bytes=size, sha256=sha256)
        if response.status_code >= 400:
            retry = response.status_code in RETRYABLE_STATUS
            row.update(error=f"HTTP {response.status_code}", retry=retry)
    row["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return row


async def _save_body(response: httpx.Response, path: Path, limits: _Limits) -> tuple[int, str]:
    """Stream the body to `path` within the limits; nothing stays behind when it fails."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.body:
        raise limits.too_large()
    digest, size = hashlib.sha256(), 0
    try:
        # Disk writes run off the event loop: a slow disk must not stall other fetches.
        out = await asyncio.to_thread(path.open, "wb")
        try:
            async for chunk in response.aiter_bytes():
                if size + len(chunk) > limits.body:
                    raise limits.too_large()
                limits.budget.take(len(chunk))
                size += len(chunk)
                digest.update(chunk)
                await asyncio.to_thread(out.write, chunk)
        finally:
            await asyncio.to_thread(out.close)
    except BaseException:
        limits.budget.give_back(size)
        await asyncio.to_thread(path.unlink, missing_ok=True)
        raise
    return size, digest.hexdigest()


async def process(ctx: StageContext) -> list[dict[str, Any]]:
    fetched: list[dict[str, Any]] = await ctx.output(BulkJobStage.CONTENT_FETCH) or []
    await ctx.start(len(fetched))
    bodies = _bodies_dir(ctx)
    rows = await asyncio.to_thread(lambda: [_describe(row, bodies) for row in fetched])
    failed = 0
    for row in rows:
        if row["error"]:
            failed += 1
            ctx.item_failed(row["url"], row["error"])
    await ctx.report(len(rows) - failed, failed, len(rows))
    return rows


def _describe(row: dict[str, Any], bodies: Path) -> dict[str, Any]:
    body_file = row.get("body_file")
    head = b""
    if body_file:
        with (bodies / body_file).open("rb") as body:
            head = body.read(TITLE_WINDOW)
    return {
        "url": row["url"],
        "status": row.get("status"),
        "content_type": row.get("content_type"),
        "size_bytes": row.get("size_bytes", 0),
        "sha256": row.get("sha256"),
        "title": _title(head, row.get("content_type")),
        "elapsed_ms": row.get("elapsed_ms"),
        "attempts": row.get("attempts"),
        "error": row.get("error"),
        "body_file": body_file,
    }


def _title(body: bytes, content_type: str | None) -> str | None:
    if not body or (content_type and "html" not in content_type):
        return None
    match = TITLE.search(body)
    if match is None:
        return None
    text = match.group(1).decode("utf-8", errors="replace")
    return html.unescape(" ".join(text.split()))[:500] or None


async def export(ctx: StageContext) -> dict[str, Any]:
    rows: list[dict[str, Any]] = await ctx.output(BulkJobStage.CONTENT_PROCESSING) or []
    fmt = ctx.job_data.get("export_format", "csv")
    await ctx.start(len(rows))
    public = [{k: v for k, v in row.items() if k != "body_file"} for row in rows]
    data: Any = public
    if fmt == "zip":
        data = _zip_members(public, rows, _bodies_dir(ctx))
    export_id = await ctx.manager.create_export(ctx.job_id, fmt, data, filename_prefix=NAME)
    await ctx.report(len(rows), total=len(rows))
    return {"export_id": export_id}


def _zip_members(
    public: list[dict[str, Any]], rows: list[dict[str, Any]], bodies: Path
) -> Iterator[tuple[str, Any]]:
    yield "results.json", public
    for index, row in enumerate(rows):
        if row.get("body_file"):
            yield f"bodies/{index:05d}.bin", bodies / row["body_file"]


async def retry_data(services: StageServices, job: Job) -> dict[str, Any] | None:
    """The URLs that failed, with the job's other settings: read from the fetch stage's
    results (kept while the job has exports), else from the failures the stage recorded when
    those are all of them."""
    data = HttpFetchData.model_validate(job.job_data)
    outputs = services.settings.bulk_export_path
    urls = await asyncio.to_thread(_failed_urls, outputs, job.id)
    stage = job.stage(BulkJobStage.CONTENT_FETCH)
    if urls is None and stage is not None:
        urls = recorded_failed_items(stage)
    if urls is None:
        counted = 0 if stage is None else stage.items_failed
        raise Conflict(
            f"job {job.id}: which of its {counted} failed URLs to fetch again is no longer"
            " known (its fetch results went with its exports, and its fetch stage recorded"
            " only the first of them)"
        )
    return data.model_dump(mode="json") | {"urls": urls} if urls else None


def _failed_urls(outputs: Path, job_id: str) -> list[str] | None:
    rows = read_stage_output(outputs, job_id, BulkJobStage.CONTENT_FETCH)
    if not isinstance(rows, list):
        return None
    return [row["url"] for row in rows if row.get("error")]


PROCESSORS = {
    BulkJobStage.INITIALIZATION: initialize,
    BulkJobStage.CONTENT_FETCH: fetch,
    BulkJobStage.CONTENT_PROCESSING: process,
    BulkJobStage.EXPORT_GENERATION: export,
}
#: No checks beyond `validate`, and no other kinds of work.
AUTHORIZE = None
KINDS: tuple[str, ...] = ()
RETRY_DATA = retry_data
#: A store (or network) out of reach for a moment does not fail the job: the stage starts
#: again (each URL has its own retries; fetching them all again is the costly one).
STAGE_RETRIES = {
    BulkJobStage.CONTENT_FETCH: StageRetryPolicy(attempts=2, backoff_s=2.0),
    BulkJobStage.CONTENT_PROCESSING: StageRetryPolicy(attempts=3, backoff_s=1.0),
    BulkJobStage.EXPORT_GENERATION: StageRetryPolicy(attempts=3, backoff_s=1.0),
}
