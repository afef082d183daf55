"""Webhook deliveries end to end, on both stores: real workers (Scheduler + WebhookSource,
and a `bulkjobs worker` process) send to a receiver on 127.0.0.1 that verifies each request
with the `standardwebhooks` reference library."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from src.config import Settings
from src.services.domain import NewJob
from src.services.domain.webhooks import WebhookDelivery, WebhookEndpoint
from src.services.store.base import Store
from src.services.store.convex import ConvexStore
from src.services.webhooks import WebhookService
from src.services.worker.registry import OperationRegistry
from src.services.worker.scheduler import Scheduler
from src.services.worker.sources import WEBHOOK_DELIVERY, WebhookSource
from tests.webhook_receiver import Received, Receiver, eventually, until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Small back-offs and leases, and loopback allowed (the receiver is on 127.0.0.1)."""
    return settings.model_copy(
        update={
            "bulkjobs_http_fetch_allowed_hosts": "127.0.0.1",
            "bulkjobs_webhook_retry_base_s": 0.05,
            "bulkjobs_webhook_retry_cap_s": 0.2,
            "bulkjobs_webhook_timeout_s": 5,
            "bulkjobs_lease_seconds": 1,
        }
    )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    made = Receiver()
    yield made
    made.stop()


@asynccontextmanager
async def worker(store: Store, settings: Settings, name: str = "w") -> AsyncIterator[Scheduler]:
    """A worker of webhook deliveries only, running until the block ends."""
    registry = OperationRegistry()
    registry.add_source(WebhookSource(store, settings))
    scheduler = Scheduler(
        worker_id=name,
        operations=[WEBHOOK_DELIVERY],
        claim_batch_size=10,
        max_concurrency=4,
        store=store,
        registry=registry,
        lease_s=settings.bulkjobs_lease_seconds,
        poll_interval_s=0.05,
        grace_s=0,
    )
    task = asyncio.create_task(scheduler.run())
    try:
        yield scheduler
    finally:
        scheduler.request_stop()
        await task


def all_of(
    store: Store, endpoint: WebhookEndpoint, test: Callable[[WebhookDelivery], bool]
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return all(test(delivery) for delivery in await deliveries(store, endpoint))

    return check


async def register(store: Store, receiver: Receiver, events: list[str]) -> WebhookEndpoint:
    endpoint = await WebhookService(store).create("alice", receiver.url, events)
    receiver.secret = endpoint.secret
    return endpoint


async def new_jobs(store: Store, count: int) -> list[str]:
    job = NewJob(job_type="sample", user_id="alice", job_data={}, stages=["a"])
    return [await store.create(job, None) for _ in range(count)]


async def deliveries(store: Store, endpoint: WebhookEndpoint) -> list[WebhookDelivery]:
    return await store.webhook_deliveries(endpoint.id, limit=200)


async def test_a_receiver_down_then_up_gets_everything_once(
    store: Store, settings: Settings, receiver: Receiver
) -> None:
    endpoint = await register(store, receiver, ["job.created"])
    jobs = await new_jobs(store, 3)
    async with worker(store, settings):
        # Down: nothing listens on its port, every attempt fails and is retried.
        await eventually(all_of(store, endpoint, lambda d: d.attempts >= 2))
        [sample] = (await deliveries(store, endpoint))[:1]
        assert "ConnectError" in (sample.last_error or "")
        receiver.start()
        await eventually(all_of(store, endpoint, lambda d: d.status == "delivered"))
    counts = receiver.counts()
    assert sorted(counts) == sorted(d.id for d in await deliveries(store, endpoint))
    assert set(counts.values()) == {1}
    payloads = receiver.payloads()
    assert all(payload is not None for payload in payloads), "a signature did not verify"
    assert sorted(p["data"]["job_id"] for p in payloads) == sorted(jobs)
    assert {p["type"] for p in payloads} == {"job.created"}


async def test_a_receiver_answering_500_then_200(
    store: Store, settings: Settings, receiver: Receiver
) -> None:
    receiver.script = lambda request, seen: 500 if seen == 1 else 200
    receiver.start()
    endpoint = await register(store, receiver, ["job.created", "job.cancelled"])
    [job_id] = await new_jobs(store, 1)
    await store.update_status(job_id, "cancelled")  # type: ignore[arg-type]
    async with worker(store, settings):
        await until(lambda: len(receiver.received) >= 4)
        await eventually(all_of(store, endpoint, lambda d: d.status == "delivered"))
    done = await deliveries(store, endpoint)
    assert [(d.event_type, d.attempts, d.last_status_code) for d in done] == [
        ("job.cancelled", 2, 200),
        ("job.created", 2, 200),
    ]
    assert receiver.counts() == {d.id: 2 for d in done}
    assert all(request.payload is not None for request in receiver.received)
    # Both attempts of a delivery carry the same body, so a receiver can deduplicate.
    bodies: dict[str, set[str]] = {}
    for request in receiver.received:
        bodies.setdefault(request.webhook_id, set()).add(request.body)
    assert all(len(sent) == 1 for sent in bodies.values())
    assert (await store.webhook_get(endpoint.id)).failing_since is None  # type: ignore[union-attr]


def worker_env(store: Store, settings: Settings) -> dict[str, str]:
    env = os.environ | {
        "BULKJOBS_DB_PATH": str(settings.bulkjobs_db_path),
        "BULKJOBS_HTTP_FETCH_ALLOWED_HOSTS": "127.0.0.1",
        "BULKJOBS_WEBHOOK_TIMEOUT_S": "60",
        "BULKJOBS_LOG_LEVEL": "WARNING",
    }
    if isinstance(store, ConvexStore):
        key = store._client.headers["authorization"].removeprefix("Convex ")
        env |= {"BULKJOBS_STORE": "convex", "CONVEX_URL": store.url, "CONVEX_DEPLOY_KEY": key}
    return env


async def test_a_worker_killed_mid_delivery_is_redelivered_with_the_same_id(
    store: Store, settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.holding.set()  # the first request is held open while its sender is killed
    receiver.start()
    endpoint = await register(store, receiver, ["job.created"])
    await new_jobs(store, 1)
    command = [sys.executable, "-m", "src.cli", "worker", "--operations", WEBHOOK_DELIVERY]
    command += ["--lease", "1", "--poll-interval", "0.05", "--name", "doomed"]
    command += ["--outbox", str(tmp_path / "doomed.jsonl")]
    process = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, env=worker_env(store, settings)
    )
    try:
        await until(lambda: receiver.received or process.returncode is not None)
        assert process.returncode is None, "the worker process ended before delivering"
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    [first] = receiver.received
    [held] = await deliveries(store, endpoint)
    assert (held.status, held.id) == ("delivering", first.webhook_id)
    receiver.holding.clear()
    receiver.released.set()
    async with worker(store, settings, "survivor"):
        await until(lambda: len(receiver.received) >= 2)
        await eventually(all_of(store, endpoint, lambda d: d.status == "delivered"))
    again: Received = receiver.received[1]
    assert again.webhook_id == first.webhook_id and again.body == first.body
    assert again.payload is not None
    [done] = await deliveries(store, endpoint)
    assert done.attempts == 2 and done.last_status_code == 200
