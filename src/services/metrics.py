"""Prometheus metrics: counters kept by this process, and a snapshot of the shared store.

Counters and histograms (stage durations, items, exports, rate-limit rejections, claims,
container outcomes, store latency) count what happened in this process; a scrape adds
gauges read from the store at that moment (jobs by status and type, container jobs by status,
hosts, work items), which are right whichever process did the work. `GET /metrics` serves
both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

#: This process's counters; one registry per process (apps made in tests share it).
REGISTRY = CollectorRegistry(auto_describe=True)

STAGE_SECONDS = Histogram(
    "bulkjobs_stage_duration_seconds",
    "Time from a stage's start to its completion",
    ["job_type", "stage"],
    buckets=(0.05, 0.25, 1, 5, 15, 60, 300, 900, 3600, 14400),
    registry=REGISTRY,
)
ITEMS = Counter(
    "bulkjobs_items_total",
    "Items of completed stages, by outcome",
    ["job_type", "stage", "outcome"],
    registry=REGISTRY,
)
EXPORTS = Counter("bulkjobs_exports_total", "Export files written", ["format"], registry=REGISTRY)
EXPORT_BYTES = Counter(
    "bulkjobs_export_bytes_total", "Bytes of export files written", ["format"], registry=REGISTRY
)
RATE_LIMITED = Counter(
    "bulkjobs_rate_limit_rejections_total",
    "Job creations refused by the per-user rate limit",
    registry=REGISTRY,
)
CLAIMS = Counter(
    "bulkjobs_worker_claims_total",
    "Items claimed by workers of this process",
    ["kind"],
    registry=REGISTRY,
)
CONTAINER_JOBS_FINISHED = Counter(
    "bulkjobs_container_jobs_finished_total",
    "Container jobs carried to a final status by this process",
    ["executor_type", "status"],
    registry=REGISTRY,
)
OUTBOX_DEPTH = Gauge(
    "bulkjobs_outbox_depth",
    "Reports waiting in this process's worker outbox",
    registry=REGISTRY,
)
STORE_SECONDS = Histogram(
    "bulkjobs_store_operation_seconds",
    "Latency of store operations",
    ["store", "operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
    registry=REGISTRY,
)


class StoreTimer:
    """`with StoreTimer("local", "create"):` observes the block's latency."""

    __slots__ = ("_labels", "_started")

    def __init__(self, store: str, operation: str) -> None:
        self._labels = (store, operation)
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *_: object) -> None:
        STORE_SECONDS.labels(*self._labels).observe(time.perf_counter() - self._started)


class StoreSnapshot(Collector):
    """Gauges read from the store when scraped (values set by `load`)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "bulkjobs_jobs", "Bulk jobs in the store by status", labels=["status"]
        )
        for status, count in self.values.get("jobs_by_status", {}).items():
            jobs.add_metric([status], count)
        yield jobs
        by_type = GaugeMetricFamily("bulkjobs_jobs_by_type", "Bulk jobs by type", labels=["type"])
        for job_type, count in self.values.get("jobs_by_type", {}).items():
            by_type.add_metric([job_type], count)
        yield by_type
        yield from self._containers()
        yield from self._hosts()
        work = GaugeMetricFamily("bulkjobs_work_items", "Work items by status", labels=["status"])
        for status, count in self.values.get("work_by_status", {}).items():
            work.add_metric([status], count)
        yield work

    def _containers(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "bulkjobs_container_jobs", "Container jobs in the store by status", labels=["status"]
        )
        for status, count in self.values.get("containers_by_status", {}).items():
            family.add_metric([status], count)
        yield family

    def _hosts(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "bulkjobs_host_running_jobs",
            "Container jobs holding a slot on each host, by executor",
            labels=["host", "executor_type"],
        )
        capacity = GaugeMetricFamily(
            "bulkjobs_host_capacity", "max_concurrent_jobs of each host", labels=["host"]
        )
        healthy = GaugeMetricFamily(
            "bulkjobs_host_healthy", "1 when a host is active and healthy", labels=["host"]
        )
        for host in self.values.get("hosts", []):
            running.add_metric([host.name, host.executor_type], host.current_job_count)
            capacity.add_metric([host.name], host.max_concurrent_jobs)
            healthy.add_metric([host.name], float(host.is_active and host.is_healthy()))
        yield running
        yield capacity
        yield healthy


async def store_values(store: Any) -> dict[str, Any]:
    """What the snapshot shows; a part the store cannot give is left out (and logged)."""
    values: dict[str, Any] = {}
    try:
        stats = await store.get_job_stats()
        values["jobs_by_status"], values["jobs_by_type"] = stats.by_status, stats.by_type
        values["containers_by_status"] = await store.container_count_by_status()
        values["hosts"] = await store.host_list()
        if hasattr(store, "work_count_by_status"):
            values["work_by_status"] = await store.work_count_by_status()
    except Exception:
        log.warning("metrics: could not read the store", exc_info=True)
    return values


async def render(store: Any) -> bytes:
    """Prometheus text: this process's counters, then the store snapshot."""
    snapshot = CollectorRegistry(auto_describe=False)
    snapshot.register(StoreSnapshot(await store_values(store)))
    return generate_latest(REGISTRY) + generate_latest(snapshot)
