"""One job of 100,000 items through 5 stages, reporting progress after every item.

Prints item-steps per second (items x stages / seconds), the store writes made, and the ratio
to the same loop with progress reporting switched off, measured in the same process. Each
item is a no-op that yields to the event loop once (`await asyncio.sleep(0)`), the least any
real async item does.

    python bench/pipeline.py [--items N] [--interval-ms MS] [--repeat R]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from src.config import load_settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.domain import BulkJobStage
from src.services.runner import StageContext
from src.services.store.local import LocalStore

STAGES = [
    BulkJobStage.INITIALIZATION,
    BulkJobStage.CONTENT_FETCH,
    BulkJobStage.CONTENT_PROCESSING,
    BulkJobStage.EXPORT_PREPARATION,
    BulkJobStage.EXPORT_GENERATION,
]


class CountingStore(LocalStore):
    """LocalStore that counts every operation that writes."""

    writes = 0

    async def _run(self, fn: Any, *args: Any) -> Any:
        if not fn.__name__.startswith(("_get", "<lambda>")):
            CountingStore.writes += 1
        return await super()._run(fn, *args)


def make_processor(items: int, report: bool) -> Any:
    async def processor(ctx: StageContext) -> None:
        manager, job_id, stage = ctx.manager, ctx.job_id, ctx.stage
        for i in range(1, items + 1):
            await asyncio.sleep(0)
            if report:
                await manager.update_stage_progress(job_id, stage, i / items, i)

    return processor


async def run_once(items: int, report: bool, interval_ms: int, root: Path) -> tuple[float, int]:
    settings = load_settings(
        bulk_export_path=root / "exports",
        bulkjobs_db_path=root / f"bench-{report}.db",
        bulk_progress_interval_ms=interval_ms,
    )
    store = CountingStore(settings.bulkjobs_db_path)
    await store.open()
    manager = BulkJobManager(settings, store=store)
    processors = {stage.value: make_processor(items, report) for stage in STAGES}
    job_id = await manager.create_bulk_job("bench", "bench", {}, STAGES)
    CountingStore.writes = 0
    started = time.perf_counter()
    report_after = await manager.process_job_with_stages(job_id, processors)
    elapsed = time.perf_counter() - started
    assert report_after is not None and report_after.status == "completed"
    await manager.aclose()
    await store.aclose()
    return elapsed, CountingStore.writes


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--interval-ms", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    steps = args.items * len(STAGES)
    off: list[tuple[float, int]] = []
    on: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        # Interleaved repeats, best of each: the machine is noisy, the code is not.
        for round_ in range(args.repeat):
            root = Path(tmp) / str(round_)
            off.append(await run_once(args.items, False, args.interval_ms, root))
            on.append(await run_once(args.items, True, args.interval_ms, root))
    base_s, base_writes = min(off)
    prog_s, prog_writes = min(on)
    print(f"items: {args.items} x {len(STAGES)} stages = {steps} item-steps")
    print(f"progress off: {steps / base_s:12,.0f} item-steps/s  store writes {base_writes}")
    print(f"progress on:  {steps / prog_s:12,.0f} item-steps/s  store writes {prog_writes}")
    print(f"ratio on/off: {base_s / prog_s:.2f}  (target >= 0.8; >= 50,000 item-steps/s)")


if __name__ == "__main__":
    asyncio.run(main())
