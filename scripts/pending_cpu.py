"""CPU that waiting container jobs cost a `bulkjobs serve` (issue 14 item 4).

    .venv/bin/python scripts/pending_cpu.py [--jobs 10000] [--seconds 10] [--store convex]

Starts the server on loopback with a temporary store and measures its CPU in three phases:
idle; a user's 4 jobs (`sleep 600` on a mock host of 4 slots) running -- the baseline; the
same with `--jobs` more of that user's jobs queued behind them, waiting for a slot. Prints
CPU percent (user + system) per phase and the ratio waiting/running: 1.0 means waiting
jobs cost nothing. The per-user limit on unfinished container jobs is raised so that the
jobs can be queued. `--store convex` runs the server against the Convex test server
(tests/convex-server, the real convex/ functions in convex-test) and reports its CPU too.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from served import ROOT, Served

SLOTS = 4


class Server(Served):
    def __init__(self, jobs: int, store: dict[str, str], others: list[psutil.Process]) -> None:
        limit = {"BULKJOBS_USER_MAX_UNFINISHED_CONTAINER_JOBS": str(jobs + SLOTS)}
        super().__init__({**limit, **store}, "bulkjobs-cpu-")
        self.others = others
        self.client = httpx.Client(base_url=self.url, timeout=600)

    def post(self, path: str, token: str, body: dict[str, object]) -> httpx.Response:
        response = self.client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
        response.raise_for_status()
        return response

    def cpu_per_s(self, seconds: float) -> list[float]:
        """CPU seconds (user + system, threads and children) per wall second: the server's,
        then each other process's."""
        processes = [self.ps, *self.others]
        before, start = [_cpu(ps) for ps in processes], time.monotonic()
        time.sleep(seconds)
        wall = time.monotonic() - start
        return [(_cpu(ps) - was) / wall for ps, was in zip(processes, before, strict=True)]

    def stop(self) -> None:
        self.client.close()
        super().stop()


def add_host(server: Server) -> None:
    host = {"name": "mock-cpu", "executor_type": "mock", "max_concurrent_jobs": SLOTS}
    server.post("/hosts", server.admin, host)


def _cpu(ps: psutil.Process) -> float:
    """The process's CPU seconds and its live children's (tsx runs node as a child)."""
    total = 0.0
    for process in [ps, *ps.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def fill(server: Server, jobs: int) -> None:
    left = jobs
    while left > 0:
        count = min(left, 10_000)
        body = {"docker_image": "busybox", "command": "sleep 600", "count": count}
        server.post("/container-jobs/bulk", server.alice, {**body, "host": "mock-cpu"})
        left -= count


def wait_full(server: Server, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {server.admin}"}
    while time.monotonic() < deadline:
        hosts = server.client.get("/hosts", headers=headers).json()
        if any(h["name"] == "mock-cpu" and h["current_job_count"] >= SLOTS for h in hosts):
            return
        time.sleep(0.2)
    raise TimeoutError("the mock host did not fill up")


def measure(args: argparse.Namespace, store: dict[str, str], others: list[psutil.Process]) -> None:
    server = Server(args.jobs, store, others)
    try:
        time.sleep(2)  # start-up work (sweep, first ticks) is not idling
        idle = server.cpu_per_s(args.seconds)
        add_host(server)
        fill(server, SLOTS)
        wait_full(server)
        time.sleep(2)
        running = server.cpu_per_s(args.seconds)
        fill(server, args.jobs)
        time.sleep(2)
        waiting = server.cpu_per_s(args.seconds)
    finally:
        server.stop()
    names = ["server", *(["convex"] if others else [])]
    figures: dict[str, object] = {"store": args.store, "pending_jobs": args.jobs}
    for index, name in enumerate(names):
        figures[f"{name}_idle_cpu_percent"] = round(idle[index] * 100, 2)
        figures[f"{name}_running_cpu_percent"] = round(running[index] * 100, 2)
        figures[f"{name}_waiting_cpu_percent"] = round(waiting[index] * 100, 2)
        ratio = waiting[index] / running[index] if running[index] else None
        figures[f"{name}_ratio_waiting_to_running"] = round(ratio, 2) if ratio else None
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--store", choices=["local", "convex"], default="local")
    args = parser.parse_args()
    if args.store == "local":
        measure(args, {}, [])
        return
    sys.path.insert(0, str(ROOT))
    from tests.convex_server import start_convex_server

    log = Path(tempfile.mkdtemp(prefix="bulkjobs-cpu-convex-")) / "server.log"
    convex = start_convex_server(log)
    try:
        env = {
            "BULKJOBS_STORE": "convex",
            "CONVEX_URL": convex.url,
            "CONVEX_DEPLOY_KEY": convex.admin_key,
        }
        measure(args, env, [psutil.Process(convex.process.pid)])
    finally:
        convex.stop()
        shutil.rmtree(log.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
