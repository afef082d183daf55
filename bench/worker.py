"""10,000 no-op work items through one worker process and through two, on the embedded store,
beside peers doing the same work in the same run: Huey with its SQLite storage and Huey
against a redis-server that this benchmark starts on 127.0.0.1 and stops afterwards (it
installs Debian's redis-server first when it is missing). Targets: ours >= 3x Huey + SQLite
and >= 1x Huey + Redis.

Every one of our items is claimed under a lease (batches of --batch per transaction), run
under the scheduler's semaphore, and reported with an idempotency key (batched). Peers run
their own dequeue -> execute loop (what their consumers do, minus the idle sleeps); Huey
removes a task when it dequeues it, so its items carry no lease and no report.

Workers are separate processes, started and opened before the clock starts; the clock
stops when the last one has drained the queue.

    python bench/worker.py [--items N] [--concurrency C] [--batch B] [--skip-redis]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from src.services.domain.work import MAX_WORK_BATCH, NewWorkItem
from src.services.store.local import LocalStore
from src.services.worker.outbox import Outbox
from src.services.worker.registry import OperationRegistry, WorkContext
from src.services.worker.scheduler import Scheduler


async def noop(payload: Any, ctx: WorkContext) -> None:
    return None


def huey_noop(i: int) -> None:
    return None


# Huey names a task after its module, which is __main__ here and __mp_main__ in a worker.
huey_noop.__module__ = "bench.worker"


async def _enqueue_ours(db: Path, items: int) -> None:
    async with LocalStore(db) as store:
        for start in range(0, items, MAX_WORK_BATCH):
            end = min(items, start + MAX_WORK_BATCH)
            await store.work_enqueue_batch(
                [NewWorkItem("noop", {"i": n}) for n in range(start, end)]
            )


async def _ours_worker(db: Path, ready: Event, go: Event, options: dict[str, int]) -> None:
    registry = OperationRegistry()
    registry.register("noop", noop)
    box = db.parent / f"outbox-{os.getpid()}.jsonl"
    async with LocalStore(db) as store, Outbox(box) as outbox:
        scheduler = Scheduler(
            f"bench/{os.getpid()}",
            ["noop"],
            options["batch"],
            options["concurrency"],
            store,
            registry,
            outbox,
            lease_s=30,
            poll_interval_s=0.01,
        )
        ready.set()
        go.wait()
        await scheduler.run(burst=True)


def ours_child(db: Path, ready: Event, go: Event, options: dict[str, int]) -> None:
    asyncio.run(_ours_worker(db, ready, go, options))


def count_completed(db: Path) -> int:
    async def count() -> int:
        async with LocalStore(db) as store:
            return (await store.work_count_by_status()).get("completed", 0)

    return asyncio.run(count())


def _huey(kind: str, where: str) -> Any:
    from huey import RedisHuey, SqliteHuey

    if kind == "sqlite":
        # A busy timeout as long as ours (30 s): the default 5 s fails under load.
        huey = SqliteHuey("bench", filename=where, timeout=30)
    else:
        host, port = where.split(":")
        huey = RedisHuey("bench", host=host, port=int(port))
    return huey, huey.task(name="noop")(huey_noop)


def huey_enqueue(kind: str, where: str, items: int) -> None:
    huey, task = _huey(kind, where)
    huey.flush()
    for n in range(items):
        task(n)


def huey_child(kind: str, where: str, ready: Event, go: Event, options: dict[str, int]) -> None:
    huey, _ = _huey(kind, where)
    ready.set()
    go.wait()
    while (task := huey.dequeue()) is not None:
        huey.execute(task)


def timed(workers: int, target: Callable[..., None], *args: Any) -> float:
    """Seconds from the start signal until `workers` processes have drained the queue."""
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    readies = [ctx.Event() for _ in range(workers)]
    procs = [ctx.Process(target=target, args=(*args, ready, go, OPTIONS)) for ready in readies]
    for proc in procs:
        proc.start()
    for ready in readies:
        ready.wait(60)
    started = time.perf_counter()
    go.set()
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"a worker exited with {proc.exitcode}")
    return time.perf_counter() - started


OPTIONS: dict[str, int] = {}


def bench_ours(root: Path, items: int, workers: int) -> float:
    db = root / f"ours-{workers}.db"
    asyncio.run(_enqueue_ours(db, items))
    seconds = timed(workers, ours_child, db)
    done = count_completed(db)
    if done != items:
        raise RuntimeError(f"only {done} of {items} items completed")
    return items / seconds


def bench_huey(kind: str, where: str, items: int, workers: int) -> float:
    huey_enqueue(kind, where, items)
    seconds = timed(workers, huey_child, kind, where)
    huey, _ = _huey(kind, where)
    if huey.pending_count():
        raise RuntimeError("huey left tasks behind")
    return items / seconds


def install_redis() -> str | None:
    """Install Debian's redis-server (this benchmark's Huey + Redis peer); why not, or None."""
    if shutil.which("apt-get") is None:
        return "redis-server is missing and apt-get is not available"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "redis-server"]
    print("installing redis-server (Debian's package) for the Huey + Redis row ...")
    for command in (install, ["apt-get", "update", "-q"], install):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if command is install and result.returncode == 0 and shutil.which("redis-server"):
            return None
    return f"apt-get install redis-server failed: {result.stderr.strip()[-300:]}"


def start_redis() -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--skip-redis", action="store_true")
    args = parser.parse_args()
    if not args.skip_redis and shutil.which("redis-server") is None:
        problem = install_redis()
        if problem:
            print(f"no Huey + Redis row: {problem}")
            args.skip_redis = True
    OPTIONS.update(concurrency=args.concurrency, batch=args.batch)
    rates: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for workers in (1, 2):
            rates["ours (embedded SQLite)", workers] = bench_ours(root, args.items, workers)
            path = str(root / f"huey-{workers}.db")
            rates["Huey + SQLite", workers] = bench_huey("sqlite", path, args.items, workers)
        if not args.skip_redis:
            redis, port = start_redis()
            try:
                for workers in (1, 2):
                    where = f"127.0.0.1:{port}"
                    rates["Huey + Redis", workers] = bench_huey("redis", where, args.items, workers)
            finally:
                redis.terminate()
                redis.wait(10)
    report(rates, args.items)


def report(rates: dict[tuple[str, int], float], items: int) -> None:
    print(f"{items:,} no-op items; items/s (higher is better)")
    print(f"{'system':<26}{'1 worker':>12}{'2 workers':>12}")
    for name in dict.fromkeys(name for name, _ in rates):
        print(f"{name:<26}{rates[name, 1]:>12,.0f}{rates[name, 2]:>12,.0f}")
    ours = "ours (embedded SQLite)"
    print("ratios ours/peer:")
    for name in dict.fromkeys(name for name, _ in rates):
        if name != ours:
            one, two = rates[ours, 1] / rates[name, 1], rates[ours, 2] / rates[name, 2]
            print(f"  vs {name:<22}{one:>10.2f}x{two:>11.2f}x")
    print(f"scaling ours 2 workers / 1: {rates[ours, 2] / rates[ours, 1]:.2f}x")


if __name__ == "__main__":
    main()
