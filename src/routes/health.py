"""Health check: no token needed; says whether the store answers."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from src.routes.deps import Manager
from src.services.errors import BulkJobError

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(manager: Manager) -> JSONResponse:
    try:
        await (await manager.store()).count_tokens()
    except BulkJobError as exc:
        return JSONResponse({"status": "degraded", "store": f"error: {exc}"}, status_code=503)
    return JSONResponse({"status": "ok", "store": manager.settings.bulkjobs_store})
