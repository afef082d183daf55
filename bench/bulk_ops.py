"""10,000 container jobs: `create_jobs_bulk` (batches of 500) versus one `create_job` per job.

Both on the embedded store, each in a fresh database. Prints jobs/s for both, the ratio
(target >= 20x) and the store round trips each made (reads and writes; one each hop to
SQLite's thread).

    python bench/bulk_ops.py [--jobs N] [--batch-size B] [--repeat R]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from src.config import load_settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.containers.bulk_operations import ContainerBulkOperations
from src.services.containers.service import ContainerJobService
from src.services.store.local import LocalStore


class CountingStore(LocalStore):
    """LocalStore that counts every hop to its database thread."""

    trips = 0

    async def _run(self, fn: Any, *args: Any) -> Any:
        CountingStore.trips += 1
        return await super()._run(fn, *args)

    async def _read(self, fn: Any, *args: Any) -> Any:
        CountingStore.trips += 1
        return await super()._read(fn, *args)


Scenario = Callable[[ContainerJobService, int, int], Awaitable[int]]


async def bulk(service: ContainerJobService, jobs: int, batch_size: int) -> int:
    created, errors = await ContainerBulkOperations(service).create_jobs_bulk(
        "alpine", jobs, "bench", "local", "true", batch_size
    )
    assert not errors, errors
    return len(created)


async def one_by_one(service: ContainerJobService, jobs: int, batch_size: int) -> int:
    for _ in range(jobs):
        await service.create_job("alpine", "true", user="bench", host="local")
    return jobs


async def run_once(scenario: Scenario, jobs: int, batch_size: int, root: Path) -> tuple[float, int]:
    settings = load_settings(
        bulk_export_path=root / "exports",
        bulkjobs_db_path=root / f"{scenario.__name__}.db",
        # The per-user quota is checked as in service, with room for every job.
        bulkjobs_user_max_unfinished_container_jobs=max(jobs, 1000),
    )
    store = CountingStore(settings.bulkjobs_db_path)
    await store.open()
    service = ContainerJobService(BulkJobManager(settings, store=store))
    CountingStore.trips = 0
    started = time.perf_counter()
    created = await scenario(service, jobs, batch_size)
    elapsed = time.perf_counter() - started
    trips = CountingStore.trips
    assert created == jobs and sum((await store.container_count_by_status()).values()) == jobs
    await service.aclose()
    await store.aclose()
    return elapsed, trips


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    singles: list[tuple[float, int]] = []
    bulks: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        # Interleaved repeats, best of each: the machine is noisy, the code is not.
        for round_ in range(args.repeat):
            root = Path(tmp) / str(round_)
            root.mkdir()
            singles.append(await run_once(one_by_one, args.jobs, args.batch_size, root))
            bulks.append(await run_once(bulk, args.jobs, args.batch_size, root))
    single_s, single_trips = min(singles)
    bulk_s, bulk_trips = min(bulks)
    print(f"jobs: {args.jobs}, batch size {args.batch_size}, best of {args.repeat}")
    print(
        f"create_job x N:   {args.jobs / single_s:10,.0f} jobs/s  store round trips {single_trips}"
    )
    print(f"create_jobs_bulk: {args.jobs / bulk_s:10,.0f} jobs/s  store round trips {bulk_trips}")
    print(f"ratio bulk/single: {single_s / bulk_s:.1f}x  (target >= 20x)")


if __name__ == "__main__":
    asyncio.run(main())
