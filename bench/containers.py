"""Container jobs through `process_container_jobs`' Scheduler: throughput and overhead.

Quick jobs (`true`: 200 on the local executor, 50 on Docker, skipped without an engine) and
sleep-bound ones (64 x `sleep 0.5` on the local executor), each at concurrency 1 and 8 on a
fresh embedded store. Prints jobs/minute, the ratio of concurrency 8 to 1 (same process,
same machine) and the processor's own overhead per job: the time from claim to final status
not spent inside executor calls or waiting for the container. Targets: sleep-bound 8/1 >= 6x;
quick local 8/1 >= 2x with overhead <= 10 ms/job. Each line also gives the cores the run
kept busy (CPU seconds of this process and all its descendants -- the fork server, job
supervisors, commands -- over the run's wall time): a quick run at concurrency 1 that
already keeps C of the machine's N cores busy can go at most N / C times faster at 8.

    python bench/containers.py [--local-jobs N] [--docker-jobs N] [--sleep-jobs N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import docker
import psutil

from src.config import load_settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.containers.processor import ProcessorStats
from src.services.containers.service import ContainerJobService
from src.services.store.local import LocalStore
from src.services.worker.service import container_worker

DOCKER_IMAGE = "bulkjobs-busybox:test"
DOCKER_URL = os.environ.get("DOCKER_HOST", "unix:///tmp/bulkjobs-docker/docker.sock")


def tree_cpu_s() -> float:
    """CPU seconds used so far by this process and its descendants, live or reaped (a
    reaped child's time is added to the parent that waited for it)."""
    total = 0.0
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.Error:  # ended meanwhile: its time is now its parent's
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


async def run_batch(
    root: Path, executor_type: str, jobs: int, concurrency: int, command: str = "true"
) -> tuple[float, float, ProcessorStats]:
    """Seconds to process `jobs` jobs at `concurrency`, the cores kept busy meanwhile, and
    the processor's stats."""
    name = f"{executor_type}-{concurrency}-{command.replace(' ', '_')}"
    settings = load_settings(
        bulkjobs_db_path=root / f"{name}.db",
        bulk_export_path=root / "exports",
        bulkjobs_local_work_dir=root / "work",
    )
    async with LocalStore(settings.bulkjobs_db_path) as store:
        manager = BulkJobManager(settings, store)
        service = ContainerJobService(manager)
        host = await _host(service, executor_type, concurrency)
        image = DOCKER_IMAGE if executor_type == "docker" else "local"
        specs = [{"docker_image": image, "command": command} for _ in range(jobs)]
        await store.container_create_batch(await service.prepare_jobs(specs, host=host))
        scheduler, source = await container_worker(manager, concurrency, 0.05)
        started, cpu_before = time.perf_counter(), tree_cpu_s()
        await scheduler.run(burst=True)
        elapsed = time.perf_counter() - started
        cores = (tree_cpu_s() - cpu_before) / elapsed
        await manager.aclose()
        done = await store.container_count_by_status()
        assert done.get("completed") == jobs, done
        return elapsed, cores, source.processor.stats


async def _host(service: ContainerJobService, executor_type: str, concurrency: int) -> str:
    if executor_type == "local":
        await service.update_host("local", max_concurrent_jobs=max(concurrency, 1))
        return "local"
    host = await service.create_host(
        name="bench-docker",
        executor_type="docker",
        connection_string=DOCKER_URL,
        auto_pull_images=False,
        max_concurrent_jobs=concurrency,
    )
    return host.id


def docker_available() -> bool:
    try:
        client = docker.DockerClient(base_url=DOCKER_URL, version="auto", timeout=5)
        client.images.get(DOCKER_IMAGE)
        client.close()
    except Exception:
        return False
    return True


async def measure(root: Path, executor_type: str, jobs: int, command: str = "true") -> None:
    rates = {}
    label = f"{executor_type} {command!r}"
    for concurrency in (1, 8):
        elapsed, cores, stats = await run_batch(root, executor_type, jobs, concurrency, command)
        rates[concurrency] = jobs / elapsed * 60
        print(
            f"{label:>16} c={concurrency}: {jobs} jobs in {elapsed:6.2f} s ="
            f" {rates[concurrency]:8.0f} jobs/min; processor overhead"
            f" {stats.overhead_per_job_s * 1000:6.2f} ms/job; {cores:.2f} of {os.cpu_count()}"
            " cores busy"
        )
    print(f"{label:>16} concurrency 8 / 1 = {rates[8] / rates[1]:.2f}x")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local-jobs", type=int, default=200)
    parser.add_argument("--docker-jobs", type=int, default=50)
    parser.add_argument("--sleep-jobs", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        await measure(Path(tmp), "local", args.local_jobs)
        if args.sleep_jobs:
            await measure(Path(tmp), "local", args.sleep_jobs, "sleep 0.5")
        if args.docker_jobs and docker_available():
            await measure(Path(tmp), "docker", args.docker_jobs)
        else:
            print(f"docker: skipped (no engine with {DOCKER_IMAGE} at {DOCKER_URL})")


if __name__ == "__main__":
    asyncio.run(main())
