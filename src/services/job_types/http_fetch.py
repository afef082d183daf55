"""Built-in job type `http_fetch`: fetch a list of URLs and export what came back.

Stages: initialization (check the URLs), content_fetch (httpx under bounded concurrency with
per-item retries; bodies kept as files), content_processing (status, content type, size,
sha256 and HTML title per URL), export_generation (CSV, JSON, or ZIP with the bodies).
A URL that fails is counted as a failed item, never fatal to the job.
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

from src.services.domain import BulkJobStage
from src.services.errors import InvalidInput
from src.services.runner import StageContext

NAME = "http_fetch"
STAGES = [
    BulkJobStage.INITIALIZATION,
    BulkJobStage.CONTENT_FETCH,
    BulkJobStage.CONTENT_PROCESSING,
    BulkJobStage.EXPORT_GENERATION,
]
TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class HttpFetchData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    urls: list[HttpUrl] = Field(min_length=1, max_length=10_000)
    concurrency: int = Field(8, ge=1, le=64)
    timeout_s: float = Field(10, gt=0, le=120)
    retries: int = Field(2, ge=0, le=5)
    export_format: Literal["csv", "json", "zip"] = "csv"
    #: Bodies larger than this are cut; the row says so.
    max_body_bytes: int = Field(5 * 1024 * 1024, ge=1, le=50 * 1024 * 1024)


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
    timeout = httpx.Timeout(data.timeout_s)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:

        async def one(index: int, url: str) -> dict[str, Any]:
            async with gate:
                row = await _fetch_with_retries(client, url, data, _bodies_dir(ctx) / str(index))
            counts["failed" if row["error"] else "done"] += 1
            await ctx.report(counts["done"], counts["failed"], total)
            return row

        return await asyncio.gather(*(one(i, str(url)) for i, url in enumerate(data.urls)))


async def _fetch_with_retries(
    client: httpx.AsyncClient, url: str, data: HttpFetchData, body_path: Path
) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for attempt in range(data.retries + 1):
        row = await _fetch_once(client, url, data.max_body_bytes, body_path)
        row["attempts"] = attempt + 1
        if not row.pop("retry", False):
            break
        await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
    return row


async def _fetch_once(
    client: httpx.AsyncClient, url: str, max_bytes: int, body_path: Path
) -> dict[str, Any]:
    started = time.perf_counter()
    row: dict[str, Any] = {"url": url, "status": None, "content_type": None, "error": None}
    try:
        async with client.stream("GET", url) as response:
            body, truncated = await _read_capped(response, max_bytes)
            row.update(
                status=response.status_code, content_type=response.headers.get("content-type")
            )
    except httpx.HTTPError as exc:
        row.update(error=f"{type(exc).__name__}: {exc}".rstrip(": "), retry=True)
        row["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return row
    await asyncio.to_thread(body_path.write_bytes, body)
    row.update(
        body_file=body_path.name,
        truncated=truncated,
        elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    if response.status_code >= 400:
        row.update(
            error=f"HTTP {response.status_code}", retry=response.status_code in RETRYABLE_STATUS
        )
    return row


async def _read_capped(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            return b"".join(chunks)[:max_bytes], True
    return b"".join(chunks), False


async def process(ctx: StageContext) -> list[dict[str, Any]]:
    fetched: list[dict[str, Any]] = ctx.output(BulkJobStage.CONTENT_FETCH) or []
    await ctx.start(len(fetched))
    bodies = _bodies_dir(ctx)
    rows = await asyncio.to_thread(lambda: [_describe(row, bodies) for row in fetched])
    failed = sum(1 for row in rows if row["error"])
    await ctx.report(len(rows) - failed, failed, len(rows))
    return rows


def _describe(row: dict[str, Any], bodies: Path) -> dict[str, Any]:
    body_file = row.get("body_file")
    body = (bodies / body_file).read_bytes() if body_file else b""
    return {
        "url": row["url"],
        "status": row.get("status"),
        "content_type": row.get("content_type"),
        "size_bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest() if body_file else None,
        "title": _title(body, row.get("content_type")),
        "elapsed_ms": row.get("elapsed_ms"),
        "attempts": row.get("attempts"),
        "truncated": row.get("truncated", False),
        "error": row.get("error"),
        "body_file": body_file,
    }


def _title(body: bytes, content_type: str | None) -> str | None:
    if not body or (content_type and "html" not in content_type):
        return None
    match = TITLE.search(body[: 256 * 1024])
    if match is None:
        return None
    text = match.group(1).decode("utf-8", errors="replace")
    return html.unescape(" ".join(text.split()))[:500] or None


async def export(ctx: StageContext) -> dict[str, Any]:
    rows: list[dict[str, Any]] = ctx.output(BulkJobStage.CONTENT_PROCESSING) or []
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
            yield f"bodies/{index:05d}.bin", (bodies / row["body_file"]).read_bytes()


PROCESSORS = {
    BulkJobStage.INITIALIZATION: initialize,
    BulkJobStage.CONTENT_FETCH: fetch,
    BulkJobStage.CONTENT_PROCESSING: process,
    BulkJobStage.EXPORT_GENERATION: export,
}
