"""Fixtures for HTTP tests: the real app on a real SQLite file, with tokens for two users."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from src.app import create_app
from src.config import Settings
from src.services.auth import create_api_token
from src.services.bulk_job_manager import BulkJobManager
from src.services.store.base import Store
from tests.conftest import STORE_KINDS, open_store


@dataclass
class Api:
    app: FastAPI
    manager: BulkJobManager
    client: httpx.AsyncClient
    alice: dict[str, str]
    bob: dict[str, str]
    admin: dict[str, str]

    async def wait_for(
        self,
        job_id: str,
        done: Callable[[dict[str, Any]], bool] | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float = 30,
    ) -> dict[str, Any]:
        """Poll the status route until `done(job)` (default: a terminal status)."""
        finished = done or (lambda job: job["status"] in ("completed", "failed", "cancelled"))
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            response = await self.client.get(
                f"/bulk-jobs/{job_id}/status", headers=headers or self.alice
            )
            job: dict[str, Any] = response.json()
            if finished(job):
                return job
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"job did not get there in time: {job}")
            await asyncio.sleep(0.02)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def embedded_worker() -> bool:
    return True


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Store]:
    """Each test of the HTTP API and the runner runs on every store."""
    opened = await open_store(request.param, settings.bulkjobs_db_path, request)
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture
async def api(settings: Settings, embedded_worker: bool, store: Store) -> AsyncIterator[Api]:
    settings = settings.model_copy(
        update={"bulkjobs_embedded_worker": embedded_worker, "bulkjobs_container_poll_s": 0.05}
    )
    manager = BulkJobManager(settings, store=store)
    app = create_app(settings, manager=manager)
    async with app.router.lifespan_context(app):
        store = await manager.store()
        tokens = [
            await create_api_token(store, "alice"),
            await create_api_token(store, "bob"),
            await create_api_token(store, "root", is_admin=True),
        ]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Api(app, manager, client, *(bearer(token) for token in tokens))


Waiter = Callable[..., Awaitable[dict[str, Any]]]
