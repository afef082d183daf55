"""Built-in job type `sample`: synthetic items at a set pace, for demos and trying the service.

job_data: {"items": 100, "delay_ms": 20, "fail_every": 0, "export_format": "json"}. Every
`fail_every`-th item fails (0: none), so a page shows failures and counts move visibly.
`item_numbers` (set by a retry of the failed items) runs only those of the items, by number;
an item fails by its number, so a retried item fails again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from src.services.domain import BulkJobStage, Job
from src.services.errors import InvalidInput
from src.services.runner import StageContext, StageRetryPolicy, StageServices

NAME = "sample"
STAGES = [
    BulkJobStage.INITIALIZATION,
    BulkJobStage.CONTENT_FETCH,
    BulkJobStage.CONTENT_PROCESSING,
    BulkJobStage.EXPORT_GENERATION,
]


_FAILURE = "synthetic failure (fail_every={}: every such item fails)"


class SampleData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: int = Field(100, ge=1, le=1_000_000)
    delay_ms: float = Field(20, ge=0, le=10_000)
    fail_every: int = Field(0, ge=0)
    export_format: Literal["csv", "json", "zip"] = "json"
    #: Only these items, by number (1 to `items`), in this order; None: all of them.
    item_numbers: list[int] | None = Field(None, min_length=1, max_length=1_000_000)

    @model_validator(mode="after")
    def _numbers_within_items(self) -> SampleData:
        for number in self.item_numbers or []:
            if not 1 <= number <= self.items:
                raise ValueError(f"item_numbers: {number} is not between 1 and {self.items}")
        return self

    def numbers(self) -> list[int]:
        """The numbers of the items this job runs, in order."""
        return self.item_numbers or list(range(1, self.items + 1))

    def fails(self, number: int) -> bool:
        return bool(self.fail_every and number % self.fail_every == 0)


def validate(job_data: dict[str, Any]) -> dict[str, Any]:
    try:
        return SampleData.model_validate(job_data).model_dump(exclude_none=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "item_numbers"
        raise InvalidInput(f"job_data.{where}", first["msg"]) from None


async def initialize(ctx: StageContext) -> None:
    await ctx.start(1)
    await ctx.report(1, total=1)


async def generate(ctx: StageContext) -> dict[str, int]:
    data = SampleData.model_validate(ctx.job_data)
    numbers = data.numbers()
    await ctx.start(len(numbers))
    failed = 0
    for done, number in enumerate(numbers, start=1):
        if data.delay_ms:
            await asyncio.sleep(data.delay_ms / 1000)
        if data.fails(number):
            failed += 1
            ctx.item_failed(f"item {number}", _FAILURE.format(data.fail_every))
        await ctx.report(done - failed, failed, len(numbers))
    return {"items": len(numbers), "failed": failed}


async def summarize(ctx: StageContext) -> dict[str, int]:
    """Goes over the generated items again, so it counts them (a failed one stays failed)."""
    generated = await ctx.output(BulkJobStage.CONTENT_FETCH) or {}
    items, failed = generated.get("items", 0), generated.get("failed", 0)
    await ctx.start(items)
    await ctx.report(items - failed, failed, items)
    return {"ok": items - failed}


def _rows(data: SampleData) -> Iterator[dict[str, Any]]:
    for number in data.numbers():
        yield {
            "item": number,
            "status": "failed" if data.fails(number) else "completed",
            "detail": {"square": number * number, "even": number % 2 == 0},
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


async def retry_data(services: StageServices, job: Job) -> dict[str, Any] | None:
    """The same items again, only those that failed: the ones the generating stage reached
    (its counts say how far) whose number fails."""
    data = SampleData.model_validate(job.job_data)
    stage = job.stage(BulkJobStage.CONTENT_FETCH)
    reached = 0 if stage is None else stage.items_completed + stage.items_failed
    failed = [number for number in data.numbers()[:reached] if data.fails(number)]
    if not failed:
        return None
    return data.model_dump(exclude_none=True) | {"item_numbers": failed}


PROCESSORS = {
    BulkJobStage.INITIALIZATION: initialize,
    BulkJobStage.CONTENT_FETCH: generate,
    BulkJobStage.CONTENT_PROCESSING: summarize,
    BulkJobStage.EXPORT_GENERATION: export,
}
#: No checks beyond `validate`, and no other kinds of work.
AUTHORIZE = None
KINDS: tuple[str, ...] = ()
RETRY_DATA = retry_data
#: A store that is out of reach for a moment does not fail the job: its stages start again.
STAGE_RETRIES = {
    BulkJobStage.CONTENT_FETCH: StageRetryPolicy(attempts=3, backoff_s=1.0),
    BulkJobStage.EXPORT_GENERATION: StageRetryPolicy(attempts=3, backoff_s=1.0),
}
