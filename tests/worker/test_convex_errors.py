"""The Scheduler against ConvexStore when the deployment answers 429, 500 or 401: the errors
come through the real HTTP layer (respx stands in for the deployment)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import respx

from src.services.errors import RateLimited, StoreAuthError, StoreUnavailable
from src.services.store.convex import ConvexStore
from src.services.worker.outbox import Outbox
from src.services.worker.registry import OperationRegistry
from src.services.worker.scheduler import Scheduler

URL = "https://happy-otter-123.convex.cloud"
MUTATION = f"{URL}/api/mutation"


def ok(value: object) -> httpx.Response:
    return httpx.Response(200, json={"status": "success", "value": value, "logLines": []})


@pytest.fixture
async def scheduler(tmp_path: Path) -> AsyncIterator[Scheduler]:
    store = ConvexStore(URL, "prod:key", retries=0)
    async with Outbox(tmp_path / "o.jsonl") as box:
        yield Scheduler(
            "w1", ["echo"], 10, 10, store, OperationRegistry(), box, poll_interval_s=0.01
        )
    await store.aclose()


@respx.mock
async def test_429_waits_as_long_as_retry_after_says(scheduler: Scheduler) -> None:
    respx.post(MUTATION).mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "3"}), ok([])]
    )
    with pytest.raises(RateLimited) as raised:
        await scheduler.store.work_claim("w1", ["echo"], 10, 5)
    assert raised.value.retry_after_s == 3
    assert isinstance(raised.value, StoreUnavailable)  # older callers still catch it
    respx.post(MUTATION).mock(side_effect=[httpx.Response(429, headers={"Retry-After": "3"})])
    assert await scheduler._guarded_tick() == (0, 3.0)


@respx.mock
async def test_500_backs_off_and_recovers(scheduler: Scheduler) -> None:
    route = respx.post(MUTATION).mock(
        side_effect=[httpx.Response(500), httpx.Response(502), ok([])]
    )
    first = await scheduler._guarded_tick()
    second = await scheduler._guarded_tick()
    assert first[0] == second[0] == 0 and first[1] is not None and second[1] is not None
    assert await scheduler._guarded_tick() == (0, None)
    assert route.call_count == 3


@respx.mock
async def test_401_stops_claiming_and_says_so(
    scheduler: Scheduler, caplog: pytest.LogCaptureFixture
) -> None:
    route = respx.post(MUTATION).mock(return_value=httpx.Response(401, json={}))
    with caplog.at_level(logging.CRITICAL), pytest.raises(StoreAuthError):
        await asyncio.wait_for(scheduler.run(), 5)
    assert route.call_count == 1
    assert "refused this worker's credentials" in caplog.text
