"""ConvexStore against the test Convex server, with LocalStore beside it.

Single progress writes (update_stage_progress) at concurrency 1, 10 and 50: mutations/s and
p99. Then items/s when a processor reports every item through the manager (coalesced writes).
Target: no collapse at 50 (p99 within 3x of the p99 at 10).

    python bench/convex_store.py [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from src.config import load_settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.domain import BulkJobStatus, NewJob, RateLimit
from src.services.store.base import Store
from src.services.store.convex import ConvexStore
from src.services.store.local import LocalStore
from tests.convex_server import start_convex_server

STAGE = "content_fetch"
LIMIT = RateLimit(max_jobs=1_000_000, window_s=3600)


async def started_job(store: Store) -> str:
    job = NewJob(job_type="bench", user_id="bench", job_data={}, stages=[STAGE])
    job_id = await store.create(job, LIMIT)
    await store.update_status(job_id, BulkJobStatus.PROCESSING)
    await store.start_stage(job_id, STAGE, items_total=1_000_000)
    return job_id


async def writer(store: Store, job_id: str, until: float, latencies: list[float]) -> None:
    count = 0
    while time.perf_counter() < until:
        count += 1
        started = time.perf_counter()
        await store.update_stage_progress(job_id, STAGE, 0.5, items_completed=count)
        latencies.append(time.perf_counter() - started)


async def single_writes(store: Store, concurrency: int, seconds: float) -> tuple[float, float]:
    # One job per writer, as many runners would each report their own job's stage.
    jobs = [await started_job(store) for _ in range(concurrency)]
    latencies: list[float] = []
    until = time.perf_counter() + seconds
    await asyncio.gather(*(writer(store, job_id, until, latencies) for job_id in jobs))
    latencies.sort()
    return len(latencies) / seconds, latencies[int(len(latencies) * 0.99) - 1]


async def coalesced_items(store: Store, root: Path, items: int) -> tuple[float, int]:
    settings = load_settings(bulk_export_path=root / "exports", bulkjobs_db_path=root / "x.db")
    manager = BulkJobManager(settings, store=store)
    job_id = await started_job(store)
    started = time.perf_counter()
    for i in range(1, items + 1):
        await asyncio.sleep(0)
        await manager.update_stage_progress(job_id, STAGE, i / items, i)
    await manager.complete_stage(job_id, STAGE)
    elapsed = time.perf_counter() - started
    writes = (await manager.progress_writer()).writes
    await manager.aclose()
    return items / elapsed, writes


async def measure(name: str, store: Store, seconds: float, root: Path) -> dict[int, float]:
    p99s = {}
    for concurrency in (1, 10, 50):
        rate, p99 = await single_writes(store, concurrency, seconds)
        p99s[concurrency] = p99
        print(
            f"{name:6} progress writes c={concurrency:2}: {rate:8,.0f} mutations/s"
            f"  p99 {p99 * 1000:7.1f} ms"
        )
    rate, writes = await coalesced_items(store, root, 20_000)
    print(f"{name:6} coalesced reporting: {rate:10,.0f} items/s with {writes} store writes")
    return p99s


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = start_convex_server(root / "server.log")
        try:
            convex = ConvexStore(server.url, server.admin_key)
            p99s = await measure("convex", convex, args.seconds, root)
            await convex.aclose()
        finally:
            server.stop()
        local = LocalStore(root / "bench.db")
        await local.open()
        await measure("local", local, args.seconds, root)
        await local.aclose()
    ratio = p99s[50] / p99s[10]
    print(f"convex p99 at 50 / p99 at 10: {ratio:.2f} (target <= 3)")


if __name__ == "__main__":
    asyncio.run(main())
