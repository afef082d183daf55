"""A runner that is SIGKILLed while its export stage exports, at a chosen point.

    python -m tests.integration.crash_export DB EXPORTS JOB_ID POINT

POINT: `writing` (mid-file: a .partial is left), `renamed` (the file is in place, not yet
registered) or `registered` (the export is recorded, the stage not completed). The test
resumes the job in its own process afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

from src.config import load_settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.domain import Export
from src.services.runner import StageContext

ROWS = 12_000
LEASE_S = 0.5


def rows(die_midway: bool) -> Iterator[dict[str, Any]]:
    for i in range(ROWS):
        if die_midway and i == ROWS - 1000:  # the first chunks are on disk by now
            os.kill(os.getpid(), signal.SIGKILL)
        yield {"i": i, "text": f"row {i}"}


def processors(point: str) -> dict[str, Any]:
    async def export(ctx: StageContext) -> None:
        await ctx.manager.create_export(ctx.job_id, "json", rows(point == "writing"))
        if point == "registered":
            os.kill(os.getpid(), signal.SIGKILL)

    return {"export_generation": export}


async def main(db: str, exports: str, job_id: str, point: str) -> None:
    settings = load_settings(
        bulkjobs_db_path=db, bulk_export_path=exports, bulkjobs_lease_seconds=LEASE_S
    )
    manager = BulkJobManager(settings)
    store = await manager.store()
    if point == "renamed":

        async def die(export: Export, max_user_bytes: int | None = None) -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        store.add_export = die  # type: ignore[method-assign]  # the kill point, not a fake
    await manager.process_job_with_stages(job_id, processors(point), kinds=())
    raise SystemExit("the runner was meant to die")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
