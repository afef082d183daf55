"""The FastAPI application: create_app(settings) and its lifespan.

The lifespan opens the store, starts the embedded worker (a Scheduler claiming bulk jobs and
container jobs, when BULKJOBS_EMBEDDED_WORKER is true) and the periodic export cleanup, and
stops them again: a server that stops cleanly hands the leases of running work back, so a
restarted server (or another worker) resumes it at once. Errors of the service become HTTP
responses in one handler here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from src.config import Settings
from src.middleware import HardeningMiddleware
from src.routes import bulk_jobs, container_bulk, containers, events, health, tokens, web, webhooks
from src.routes.validation import echo, handle_validation_error
from src.services.auth import TokenCache
from src.services.bulk_job_manager import BulkJobManager, bulk_job_manager
from src.services.containers.executors.errors import ExecutorError
from src.services.containers.service import ContainerJobService
from src.services.errors import (
    BulkJobError,
    Conflict,
    ContainerQuotaExceeded,
    ExportQuotaExceeded,
    ExportTooLarge,
    InvalidInput,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    StorageFull,
    StoreUnavailable,
)
from src.services.events import JobEventHub
from src.services.job_types import job_types
from src.services.job_types.registry import JobTypeRegistry
from src.services.worker.scheduler import Scheduler
from src.services.worker.service import embedded_worker

log = logging.getLogger(__name__)

STATUS_BY_ERROR: list[tuple[type[BulkJobError], int]] = [
    (NotFound, 404),
    (PermissionDenied, 403),
    (Conflict, 409),
    (ExportTooLarge, 413),
    # Bytes held are storage, like an export too large; unfinished jobs free up as they end.
    (ExportQuotaExceeded, 413),
    (ContainerQuotaExceeded, 429),
    (InvalidInput, 422),
    (RateLimited, 429),
    (StoreUnavailable, 503),
    (StorageFull, 507),
    # An executor backend refused or could not be reached: the gateway's fault, not ours.
    (ExecutorError, 502),
]


async def handle_service_error(request: Request, exc: Exception) -> JSONResponse:
    """Translate the service's errors into HTTP, never leaking a traceback."""
    status = next((code for kind, code in STATUS_BY_ERROR if isinstance(exc, kind)), 500)
    body: dict[str, object] = {"detail": echo(str(exc), 2000), "error": type(exc).__name__}
    headers: dict[str, str] = {}
    if isinstance(exc, InvalidInput):
        body["field"] = exc.field
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after_s)
        body["retry_after_s"] = exc.retry_after_s
    if isinstance(exc, QuotaExceeded):
        body.update(limit=exc.limit, limit_value=exc.maximum, usage=exc.usage)
        body["requested"] = exc.requested
    if status >= 500:
        log.error("request failed: %s", exc, exc_info=status == 500)
    return JSONResponse(body, status_code=status, headers=headers)


async def _periodic_cleanup(manager: BulkJobManager, interval_s: float) -> None:
    """Expired exports, then leftover files; the first round runs at start-up."""
    while True:
        try:
            removed = await manager.cleanup_expired_exports()
            if removed:
                log.info("removed %d expired exports", removed)
            swept = await manager.sweep_files()
            if swept.files:
                log.info("swept %d leftover files (%d bytes)", swept.files, swept.bytes)
        except (BulkJobError, OSError):
            log.warning("export cleanup failed; retrying next round", exc_info=True)
        await asyncio.sleep(interval_s)


def _watch_background(task: asyncio.Task[Any]) -> None:
    """A background loop that dies takes the process's attention with it."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("background task %s died", task.get_name(), exc_info=task.exception())


async def _stop_worker(worker: Scheduler, task: asyncio.Task[Any]) -> None:
    """Stop claiming and hand running work back (its runners release their leases)."""
    worker.request_stop()
    try:
        await task
    except Exception:  # it died earlier; _watch_background logged why
        log.debug("embedded worker had stopped", exc_info=True)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    manager: BulkJobManager = app.state.manager
    settings = manager.settings
    await manager.store()
    tasks: list[asyncio.Task[Any]] = [
        asyncio.create_task(
            _periodic_cleanup(manager, settings.bulkjobs_cleanup_interval_s), name="export-cleanup"
        )
    ]
    worker: Scheduler | None = None
    if settings.bulkjobs_embedded_worker:
        worker = await embedded_worker(manager, app.state.registry)
        tasks.append(asyncio.create_task(worker.run(), name="embedded-worker"))
    app.state.worker = worker
    for task in tasks:
        task.add_done_callback(_watch_background)
    app.state.events.start()
    try:
        yield
    finally:
        await app.state.events.aclose()
        if worker is not None:
            await _stop_worker(worker, tasks[-1])
        await app.state.containers.aclose()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await manager.aclose()


def create_app(
    settings: Settings | None = None,
    manager: BulkJobManager | None = None,
    registry: JobTypeRegistry | None = None,
) -> FastAPI:
    """Build the app; the store is opened by the lifespan, not here."""
    if manager is None:
        # The usage guide's routes use the module-level manager; share it by default.
        manager = bulk_job_manager if settings is None else BulkJobManager(settings)
    # The docs pages load Swagger UI and ReDoc from the fastapi-offline package, not a CDN.
    app = FastAPIOffline(
        title="bulkjobs",
        summary="Multi-stage bulk jobs with live progress, exports and container jobs",
        version="0.1.0",
        lifespan=lifespan,
        favicon_url=web.ICON_URL,
    )
    app.state.manager = manager
    app.state.registry = registry or job_types
    app.state.worker = None
    app.state.containers = ContainerJobService(manager)
    app.state.token_cache = TokenCache()
    app.state.events = JobEventHub(manager.store)
    manager.on_job_event = app.state.events.on_job_event
    app.add_exception_handler(BulkJobError, handle_service_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.include_router(health.router)
    app.include_router(events.router)  # before bulk_jobs: /bulk-jobs/events is not a job id
    app.include_router(bulk_jobs.router)
    # Before containers.router: /container-jobs/bulk/... must not match /container-jobs/{id}.
    app.include_router(container_bulk.router)
    app.include_router(containers.router)
    app.include_router(containers.admin_router)
    app.include_router(tokens.router)
    app.include_router(webhooks.router)
    app.include_router(web.router)
    app.include_router(health.metrics_router)
    _add_middleware(app, manager.settings)
    app.openapi = lambda: security_openapi(app)  # type: ignore[method-assign]  # FastAPI's documented way to replace the schema
    return app


def _add_middleware(app: FastAPI, settings: Settings) -> None:
    """Body limit and security headers on every request; CORS only when configured."""
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            expose_headers=["Retry-After", "Content-Disposition"],
            max_age=600,
        )
    app.add_middleware(HardeningMiddleware, max_body_bytes=settings.bulkjobs_max_body_bytes)


def security_openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document with bearer auth declared on every route but health and docs."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A token from `bulkjobs token create`",
            }
        }
        for path, operations in schema["paths"].items():
            if path != "/healthz":
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
        app.openapi_schema = schema
    return app.openapi_schema
