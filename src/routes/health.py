"""Health and metrics: no token needed for either (put /metrics behind your network's
access rules, as is usual for Prometheus targets)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from src.routes.deps import Manager
from src.routes.validation import JsonRoute
from src.services import metrics
from src.services.bulk_job_manager import BulkJobManager
from src.services.errors import BulkJobError

router = APIRouter(route_class=JsonRoute, tags=["health"])
metrics_router = APIRouter(route_class=JsonRoute, tags=["health"])


@router.get("/healthz")
async def healthz(manager: Manager) -> JSONResponse:
    """The store's state and each executor host's recorded health and capacity; 503 when
    the store does not answer."""
    try:
        store = await manager.store()
        await store.count_tokens()
    except BulkJobError as exc:
        return JSONResponse({"status": "degraded", "store": f"error: {exc}"}, status_code=503)
    hosts = await _hosts(manager)
    return JSONResponse(
        {"status": "ok", "store": manager.settings.bulkjobs_store, "executor_hosts": hosts}
    )


async def _hosts(manager: BulkJobManager) -> list[dict[str, Any]] | str:
    try:
        hosts = await (await manager.store()).host_list()
    except BulkJobError as exc:
        return f"error: {exc}"
    return [
        {
            "name": host.name,
            "executor_type": host.executor_type,
            "active": host.is_active,
            "healthy": host.is_healthy(),
            "available": host.is_available(),
            "health_check_failures": host.health_check_failures,
            "last_health_check": host.last_health_check.isoformat()
            if host.last_health_check
            else None,
            "running_jobs": host.current_job_count,
            "max_concurrent_jobs": host.max_concurrent_jobs,
        }
        for host in hosts
    ]


@metrics_router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(manager: Manager) -> Response:
    """Prometheus text format: this process's counters and a snapshot of the store."""
    body = await metrics.render(await manager.store())
    return Response(body, media_type=CONTENT_TYPE_LATEST)
