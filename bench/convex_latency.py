"""Scale-out on Convex: ConvexStore against the test Convex server behind a TCP proxy that
delays every chunk 25 ms each way (what a worker in another region sees: 50 ms per call).

In one run, in one process:
1. a 5-stage job of --items items whose processors report progress after every item:
   item-steps/s and the mutations made; again with a fifth of the items, to show that the
   mutations do not grow with the item count (progress writes are coalesced);
2. a worker (the Scheduler) draining --work no-op work items with claim batch --batch:
   items/s and mutations;
3. the baseline: the same kind of items claimed and reported one mutation at a time (claim
   batch 1, one in flight), on --baseline-work items (at ~100 ms an item, 5,000 would take
   minutes; the rate is what is compared).

Targets: pipeline >= 20,000 item-steps/s with mutations independent of the item count; the
worker >= 20x the one-at-a-time baseline. Each line also splits the time spent in calls into
the added latency (calls x 50 ms) and the rest: the test server's own work, which for work
items grows with the table (convex-test answers an index lookup by scanning every document
of the table, where Convex walks an index), the proxy and this process.

    python bench/convex_latency.py [--items N] [--work N] [--batch B] [--concurrency C]
        [--baseline-work N] [--delay-ms MS]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pipeline import STAGES, make_processor
from src.config import load_settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.domain.work import MAX_WORK_BATCH, NewWorkItem
from src.services.store.convex import ConvexStore, Kind
from src.services.worker.outbox import Outbox
from src.services.worker.registry import OperationRegistry, WorkContext
from src.services.worker.scheduler import Scheduler
from tests.convex_server import start_convex_server

#: The proxy stops by itself after this long, whatever happens to the benchmark.
PROXY_LIFETIME_S = 900.0


class CountingConvexStore(ConvexStore):
    """ConvexStore that counts the calls it makes, by kind, and the seconds spent in them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[Kind] = Counter()
        self.seconds_in_calls = 0.0

    async def _call(self, kind: Kind, path: str, args: Mapping[str, Any]) -> Any:
        self.calls[kind] += 1
        started = time.perf_counter()
        try:
            return await super()._call(kind, path, args)
        finally:
            self.seconds_in_calls += time.perf_counter() - started


# -- the latency proxy (its own process, so its work never slows the measured loop) ----------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy one direction, delivering each chunk `delay` seconds after it arrived."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()

    delivering = asyncio.create_task(deliver())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((loop.time() + delay, data))
    except ConnectionError:
        pass
    queue.put_nowait((loop.time() + delay, b""))
    await delivering


async def _serve_proxy(target_port: int, delay: float, conn: Connection) -> None:
    async def connect(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(
            _pipe(client_r, server_w, delay),
            _pipe(server_r, client_w, delay),
            return_exceptions=True,
        )

    server = await asyncio.start_server(connect, "127.0.0.1", 0)
    conn.send(server.sockets[0].getsockname()[1])
    async with server:
        await asyncio.sleep(PROXY_LIFETIME_S)


def proxy_main(target_port: int, delay: float, conn: Connection) -> None:
    asyncio.run(_serve_proxy(target_port, delay, conn))


def start_proxy(target_port: int, delay: float) -> tuple[mp.process.BaseProcess, int]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=proxy_main, args=(target_port, delay, child), daemon=True)
    proc.start()
    if not parent.poll(60):
        proc.kill()
        raise RuntimeError("the latency proxy did not start")
    return proc, int(parent.recv())


# -- what is measured -------------------------------------------------------------------------


@dataclass
class Figures:
    items: int
    seconds: float
    mutations: int
    #: Calls of any kind and the seconds they took (summed, so overlapping calls add up).
    calls: int
    seconds_in_calls: float

    @property
    def rate(self) -> float:
        return self.items / self.seconds


class Measured:
    """Counts what one phase costs the store."""

    def __init__(self, store: CountingConvexStore) -> None:
        self.store = store
        self.mutations = store.calls["mutation"]
        self.calls = store.calls.total()
        self.in_calls = store.seconds_in_calls
        self.started = time.perf_counter()

    def figures(self, items: int) -> Figures:
        store = self.store
        return Figures(
            items,
            time.perf_counter() - self.started,
            store.calls["mutation"] - self.mutations,
            store.calls.total() - self.calls,
            store.seconds_in_calls - self.in_calls,
        )


async def pipeline(store: CountingConvexStore, items: int, root: Path) -> Figures:
    settings = load_settings(bulk_export_path=root / "exports", bulkjobs_db_path=root / "x.db")
    manager = BulkJobManager(settings, store=store)
    processors = {stage.value: make_processor(items, report=True) for stage in STAGES}
    job_id = await manager.create_bulk_job("bench", f"bench-{uuid.uuid4().hex}", {}, STAGES)
    measured = Measured(store)
    report = await manager.process_job_with_stages(job_id, processors)
    figures = measured.figures(items * len(STAGES))
    await manager.aclose()
    assert report is not None and report.status == "completed", report
    return figures


async def noop(payload: Any, ctx: WorkContext) -> None:
    return None


async def drain(
    store: CountingConvexStore, items: int, batch: int, concurrency: int, root: Path
) -> Figures:
    """Enqueue `items` no-op work items, then time one worker draining them."""
    operation = f"noop-{batch}"
    for start in range(0, items, MAX_WORK_BATCH):
        count = min(MAX_WORK_BATCH, items - start)
        await store.work_enqueue_batch([NewWorkItem(operation, {"i": n}) for n in range(count)])
    registry = OperationRegistry()
    registry.register(operation, noop)
    async with Outbox(root / f"outbox-{batch}.jsonl") as outbox:
        scheduler = Scheduler(
            f"bench-{batch}", [operation], batch, concurrency, store, registry, outbox, lease_s=60
        )
        measured = Measured(store)
        await scheduler.run(burst=True)
        figures = measured.figures(items)
    if scheduler.stats.completed != items:
        raise RuntimeError(f"only {scheduler.stats.completed} of {items} items completed")
    return figures


async def measure(url: str, key: str, args: argparse.Namespace, root: Path) -> None:
    store = CountingConvexStore(url, key)
    try:
        await store.open()
        small = await pipeline(store, args.items // 5, root)
        full = await pipeline(store, args.items, root)
        worker = await drain(store, args.work, args.batch, args.concurrency, root)
        baseline = await drain(store, args.baseline_work, 1, 1, root)
    finally:
        await store.aclose()
    report(args, small, full, worker, baseline)


def line(name: str, figures: Figures, unit: str, delay_s: float) -> str:
    """Rate, mutations, and how the time in calls splits into added latency and the rest (the
    test server's own work and this process's turn to read the answer)."""
    latency = figures.calls * 2 * delay_s
    return (
        f"{name}: {figures.rate:10,.1f} {unit}/s  {figures.mutations} mutations,"
        f" {figures.calls} calls, {figures.seconds:.2f} s;"
        f" in calls {figures.seconds_in_calls:.2f} s = {latency:.2f} s added latency"
        f" + {figures.seconds_in_calls - latency:.2f} s test server, proxy and client"
    )


def report(
    args: argparse.Namespace, small: Figures, full: Figures, worker: Figures, base: Figures
) -> None:
    delay = args.delay_ms / 1000
    print(f"latency: {args.delay_ms:g} ms each way ({2 * args.delay_ms:g} ms per call)")
    print(line(f"pipeline, 5 stages x {args.items // 5:,} items", small, "item-steps", delay))
    print(line(f"pipeline, 5 stages x {args.items:,} items", full, "item-steps", delay))
    print(
        f"  mutations at {args.items:,} / at {args.items // 5:,} items:"
        f" {full.mutations / small.mutations:.2f} (target ~1); item-steps/s {full.rate:,.0f}"
        " (target >= 20,000)"
    )
    print(
        line(
            f"worker, claim batch {args.batch}, {args.concurrency} in hand", worker, "items", delay
        )
    )
    print(line("baseline, one item per claim and per report", base, "items", delay))
    print(
        f"  worker / baseline: {worker.rate / base.rate:.1f}x items/s (target >= 20x);"
        f" round trips per item {worker.calls / worker.items:.3f} vs {base.calls / base.items:.2f}"
        f" ({(base.calls / base.items) / (worker.calls / worker.items):.0f}x fewer)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--work", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=100)
    # Two batches in hand: the next claim overlaps the report of the last.
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--baseline-work", type=int, default=200)
    parser.add_argument("--delay-ms", type=float, default=25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = start_convex_server(root / "server.log")
        port = int(server.url.rsplit(":", 1)[1])
        proxy, proxy_port = start_proxy(port, args.delay_ms / 1000)
        try:
            await measure(f"http://127.0.0.1:{proxy_port}", server.admin_key, args, root)
        finally:
            proxy.kill()
            proxy.join()
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
