"""Built-in job type `sample`: synthetic items at a set pace, for demos and trying the service.

job_data: {"items": 100, "delay_ms": 20, "fail_every": 0, "export_format": "json"}. Every
`fail_every`-th item fails (0: none), so a page shows failures and counts move visibly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from src.services.domain import BulkJobStage
from src.services.errors import InvalidInput
from src.services.runner import StageContext

NAME = "sample"
STAGES = [
    BulkJobStage.INITIALIZATION,
    BulkJobStage.CONTENT_FETCH,
    BulkJobStage.CONTENT_PROCESSING,
    BulkJobStage.EXPORT_GENERATION,
]


class SampleData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: int = Field(100, ge=1, le=1_000_000)
    delay_ms: float = Field(20, ge=0, le=10_000)
    fail_every: int = Field(0, ge=0)
    export_format: Literal["csv", "json", "zip"] = "json"


def validate(job_data: dict[str, Any]) -> dict[str, Any]:
    try:
        return SampleData.model_validate(job_data).model_dump()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidInput(f"job_data.{where}", first["msg"]) from None


async def initialize(ctx: StageContext) -> None:
    await ctx.start(1)
    await ctx.report(1, total=1)


async def generate(ctx: StageContext) -> dict[str, int]:
    data = SampleData.model_validate(ctx.job_data)
    await ctx.start(data.items)
    failed = 0
    for index in range(1, data.items + 1):
        if data.delay_ms:
            await asyncio.sleep(data.delay_ms / 1000)
        if data.fail_every and index % data.fail_every == 0:
            failed += 1
        await ctx.report(index - failed, failed, data.items)
    return {"items": data.items, "failed": failed}


async def summarize(ctx: StageContext) -> dict[str, int]:
    generated = ctx.output(BulkJobStage.CONTENT_FETCH) or {}
    await ctx.start(1)
    await ctx.report(1, total=1)
    return {"ok": generated.get("items", 0) - generated.get("failed", 0)}


def _rows(data: SampleData) -> Iterator[dict[str, Any]]:
    for index in range(1, data.items + 1):
        failed = bool(data.fail_every and index % data.fail_every == 0)
        yield {
            "item": index,
            "status": "failed" if failed else "completed",
            "detail": {"square": index * index, "even": index % 2 == 0},
        }


async def export(ctx: StageContext) -> dict[str, str]:
    data = SampleData.model_validate(ctx.job_data)
    await ctx.start(1)
    payload: Any = _rows(data)
    if data.export_format == "zip":
        payload = {"items.json": list(_rows(data)), "README.txt": "Sample job export\n"}
    export_id = await ctx.manager.create_export(
        ctx.job_id, data.export_format, payload, filename_prefix=NAME
    )
    await ctx.report(1, total=1)
    return {"export_id": export_id}


PROCESSORS = {
    BulkJobStage.INITIALIZATION: initialize,
    BulkJobStage.CONTENT_FETCH: generate,
    BulkJobStage.CONTENT_PROCESSING: summarize,
    BulkJobStage.EXPORT_GENERATION: export,
}
