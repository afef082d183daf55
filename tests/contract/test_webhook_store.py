"""Contract suite for the webhook operations: LocalStore and ConvexStore alike. Events are
written by the job, stage, export and container job operations themselves (the outbox);
deliveries are claimed under leases and reported attempt by attempt."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest

from src.services.domain import BulkJobStatus, Export, NewJob, utcnow
from src.services.domain.containers import ContainerJob
from src.services.domain.webhooks import (
    EVENT_TYPES,
    AttemptResult,
    DeliveryRules,
    WebhookEndpoint,
)
from src.services.errors import Conflict, NotFound
from src.services.store.base import Store

RULES = DeliveryRules()
FAILED = AttemptResult(ok=False, status_code=500, error="HTTP 500: boom", retry_in_s=0.0)
OK = AttemptResult(ok=True, status_code=200)


def endpoint(user: str = "u1", events: tuple[str, ...] = EVENT_TYPES, **fields: Any) -> Any:
    values: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "user_id": user,
        "url": "http://127.0.0.1:9/hook",
        "events": events,
        "secret": "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0",
        "created_at": time.time(),
    }
    return WebhookEndpoint(**(values | fields))


async def register(store: Store, *args: Any, **fields: Any) -> WebhookEndpoint:
    made = endpoint(*args, **fields)
    await store.webhook_create(made)
    return made


async def new_job(store: Store, user: str = "u1", stages: tuple[str, ...] = ("a",)) -> str:
    return await store.create(
        NewJob(job_type="t", user_id=user, job_data={}, stages=list(stages)), None
    )


async def events_of(store: Store, endpoint_id: str) -> list[dict[str, Any]]:
    """The bodies written for an endpoint, oldest first."""
    deliveries = await store.webhook_deliveries(endpoint_id, limit=200)
    return [json.loads(delivery.body) for delivery in reversed(deliveries)]


async def test_endpoints_are_created_listed_and_removed(store: Store) -> None:
    mine = await register(store, "u1", ("job.created",), description="ci")
    other = await register(store, "u2")
    found = await store.webhook_get(mine.id)
    assert found == mine
    assert [e.id for e in await store.webhook_list("u1")] == [mine.id]
    assert {e.id for e in await store.webhook_list(None)} == {mine.id, other.id}
    with pytest.raises(Conflict):
        await store.webhook_create(mine)
    assert await store.webhook_remove(mine.id) is True
    assert await store.webhook_remove(mine.id) is False
    assert await store.webhook_get(mine.id) is None


async def test_events_go_to_the_owners_endpoints_that_want_them(store: Store) -> None:
    created_only = await register(store, "u1", ("job.created",))
    ends_only = await register(store, "u1", ("job.completed",))
    others = await register(store, "u2")
    everyone = await register(store, "admin", ("job.created",), all_users=True)
    job_id = await new_job(store, "u1")
    [body] = await events_of(store, created_only.id)
    assert body["type"] == "job.created"
    assert body["data"] == {
        "job_id": job_id,
        "job_type": "t",
        "user_id": "u1",
        "status": "pending",
    }
    assert body["timestamp"].endswith("Z")
    assert await events_of(store, ends_only.id) == []
    assert await events_of(store, others.id) == []
    assert [b["data"]["job_id"] for b in await events_of(store, everyone.id)] == [job_id]


async def test_stage_and_job_ends_are_written_with_the_change(store: Store) -> None:
    hook = await register(store, "u1")
    done = await new_job(store, stages=("a", "b"))
    await store.start_stage(done, "a")
    await store.complete_stage(done, "a", items_completed=3, items_failed=1)
    await store.start_stage(done, "b")
    await store.complete_stage(done, "b")
    failed = await new_job(store)
    await store.start_stage(failed, "a")
    await store.fail_stage(failed, "a", "it broke")
    cancelled = await new_job(store)
    await store.update_status(cancelled, BulkJobStatus.CANCELLED, error_message="stop")
    bodies = await events_of(store, hook.id)
    assert [(b["type"], b["data"]["job_id"]) for b in bodies] == [
        ("job.created", done),
        ("job.stage_completed", done),
        ("job.stage_completed", done),
        ("job.completed", done),
        ("job.created", failed),
        ("job.stage_failed", failed),
        ("job.failed", failed),
        ("job.created", cancelled),
        ("job.cancelled", cancelled),
    ]
    stage = bodies[1]["data"]
    assert (stage["stage"], stage["items_completed"], stage["items_failed"]) == ("a", 3, 1)
    assert bodies[5]["data"]["error_message"] == "it broke"
    assert bodies[6]["data"]["error_message"] == "it broke"
    assert bodies[8]["data"]["status"] == "cancelled"


async def test_an_export_is_announced_once(store: Store) -> None:
    hook = await register(store, "u1", ("export.ready",))
    job_id = await new_job(store)
    now = utcnow()
    export = Export(
        id="exp1",
        job_id=job_id,
        user_id="u1",
        format="json",
        filename="export.json",
        relative_path=f"{job_id}/export.json",
        content_type="application/json",
        size_bytes=12,
        sha256="0" * 64,
        created_at=now,
        expires_at=now + timedelta(hours=1),
    )
    await store.add_export(export)
    await store.add_export(export)  # a resumed stage registers it again
    [body] = await events_of(store, hook.id)
    assert body["type"] == "export.ready"
    assert body["data"]["export_id"] == "exp1" and body["data"]["size_bytes"] == 12


async def test_container_job_ends_are_announced(store: Store) -> None:
    hook = await register(store, "u1", ("container_job.completed", "container_job.failed"))
    job = ContainerJob.model_validate(
        {"id": uuid.uuid4().hex, "docker_image": "busybox", "host_id": "local", "created_by": "u1"}
    )
    await store.container_create(job)
    for status in ("queued", "launching", "running"):
        await store.container_transition(job.id, status)
    await store.container_transition(job.id, "completed", {"exit_code": 0})
    [body] = await events_of(store, hook.id)
    assert body["type"] == "container_job.completed"
    assert body["data"]["container_job_id"] == job.id and body["data"]["exit_code"] == 0


async def test_a_disabled_endpoint_gets_no_new_events(store: Store) -> None:
    hook = await register(store, "u1", status="disabled", disabled_reason="test")
    await new_job(store)
    assert await events_of(store, hook.id) == []


async def test_claim_leases_each_delivery_once_and_a_success_finishes_it(store: Store) -> None:
    hook = await register(store, "u1", ("job.created",))
    await new_job(store)
    [claimed] = await store.webhook_claim("w1", 30, 10, RULES)
    assert claimed.url == hook.url and claimed.secret == hook.secret
    delivery = claimed.delivery
    assert delivery.id.startswith("msg_") and delivery.attempts == 1
    assert delivery.status == "delivering" and delivery.lease_owner == "w1"
    assert json.loads(delivery.body)["type"] == "job.created"
    assert await store.webhook_claim("w2", 30, 10, RULES) == []
    assert await store.webhook_heartbeat(delivery.id, "w1", 30) == "delivering"
    with pytest.raises(Conflict):
        await store.webhook_heartbeat(delivery.id, "w2", 30)
    assert await store.webhook_report(delivery.id, "w1", OK, RULES) == "delivered"
    [stored] = await store.webhook_deliveries(hook.id)
    assert stored.status == "delivered" and stored.last_status_code == 200
    assert stored.delivered_at is not None
    assert await store.webhook_heartbeat(delivery.id, "w1", 30) == "delivered"
    assert await store.webhook_claim("w2", 30, 10, RULES) == []


async def test_a_failed_attempt_is_retried_with_the_same_id(store: Store) -> None:
    hook = await register(store, "u1", ("job.created",))
    await new_job(store)
    [first] = await store.webhook_claim("w1", 30, 10, RULES)
    later = AttemptResult(ok=False, status_code=503, error="HTTP 503", retry_in_s=0.3)
    assert await store.webhook_report(first.delivery.id, "w1", later, RULES) == "pending"
    [stored] = await store.webhook_deliveries(hook.id)
    assert stored.status == "pending" and stored.last_error == "HTTP 503"
    assert (await store.webhook_get(hook.id)).failing_since is not None  # type: ignore[union-attr]
    assert await store.webhook_claim("w2", 30, 10, RULES) == []  # not due yet
    await asyncio.sleep(0.5)
    [second] = await store.webhook_claim("w2", 30, 10, RULES)
    assert second.delivery.id == first.delivery.id and second.delivery.attempts == 2
    assert await store.webhook_report(second.delivery.id, "w2", OK, RULES) == "delivered"
    assert (await store.webhook_get(hook.id)).failing_since is None  # type: ignore[union-attr]


async def test_an_expired_lease_is_claimed_again_and_late_reports(store: Store) -> None:
    await register(store, "u1", ("job.created",))
    await new_job(store)
    [first] = await store.webhook_claim("w1", 0.2, 10, RULES)
    await asyncio.sleep(0.4)
    [again] = await store.webhook_claim("w2", 30, 10, RULES)
    assert again.delivery.id == first.delivery.id and again.delivery.attempts == 2
    # The first worker's failure is not its business any more; a success counts from anyone.
    assert await store.webhook_report(first.delivery.id, "w1", FAILED, RULES) == "delivering"
    assert await store.webhook_report(first.delivery.id, "w1", OK, RULES) == "delivered"
    assert await store.webhook_report(again.delivery.id, "w2", FAILED, RULES) == "delivered"


async def test_a_release_is_not_an_attempt(store: Store) -> None:
    await register(store, "u1", ("job.created",))
    await new_job(store)
    [first] = await store.webhook_claim("w1", 30, 10, RULES)
    await store.webhook_release(first.delivery.id, "w2")  # not the holder: nothing happens
    assert await store.webhook_claim("w2", 30, 10, RULES) == []
    await store.webhook_release(first.delivery.id, "w1")
    [again] = await store.webhook_claim("w2", 30, 10, RULES)
    assert again.delivery.attempts == 1


async def test_deliveries_past_the_retry_window_fail(store: Store) -> None:
    hook = await register(store, "u1", ("job.created",))
    await new_job(store)
    short = DeliveryRules(retry_window_s=0.3)
    [claimed] = await store.webhook_claim("w1", 30, 10, short)
    # A retry that would come after the window: failed now, with the last error.
    late = AttemptResult(ok=False, status_code=500, error="HTTP 500: boom", retry_in_s=5)
    assert await store.webhook_report(claimed.delivery.id, "w1", late, short) == "failed"
    await new_job(store)
    await asyncio.sleep(0.4)
    assert await store.webhook_claim("w1", 30, 10, short) == []  # due, but too old: failed
    deliveries = await store.webhook_deliveries(hook.id, status="failed")
    assert len(deliveries) == 2
    assert all("not delivered within" in (d.last_error or "") for d in deliveries)
    assert "HTTP 500: boom" in (deliveries[1].last_error or "")


async def test_an_endpoint_failing_too_long_is_disabled(store: Store) -> None:
    hook = await register(store, "u1", ("job.created",))
    await new_job(store)
    await new_job(store)
    strict = DeliveryRules(disable_after_s=0)
    first, _ = await store.webhook_claim("w1", 30, 1, strict) + [None]
    assert first is not None
    assert await store.webhook_report(first.delivery.id, "w1", FAILED, strict) == "failed"
    disabled = await store.webhook_get(hook.id)
    assert disabled is not None and disabled.status == "disabled"
    assert "every delivery failed" in (disabled.disabled_reason or "")
    assert "HTTP 500: boom" in (disabled.disabled_reason or "")
    # The other delivery is failed at its claim; new events are not written.
    assert await store.webhook_claim("w1", 30, 10, strict) == []
    await new_job(store)
    deliveries = await store.webhook_deliveries(hook.id)
    assert [d.status for d in deliveries] == ["failed", "failed"]
    assert all((d.last_error or "").startswith("endpoint disabled") for d in deliveries)
    enabled = await store.webhook_enable(hook.id)
    assert enabled.status == "active" and enabled.disabled_reason is None
    await new_job(store)
    assert len(await store.webhook_claim("w1", 30, 10, strict)) == 1
    with pytest.raises(NotFound):
        await store.webhook_enable("missing")


async def test_a_gone_receiver_disables_its_endpoint(store: Store) -> None:
    hook = await register(store, "u1", ("job.created",))
    await new_job(store)
    [claimed] = await store.webhook_claim("w1", 30, 10, RULES)
    gone = AttemptResult(ok=False, status_code=410, error="HTTP 410", gone=True)
    assert await store.webhook_report(claimed.delivery.id, "w1", gone, RULES) == "failed"
    disabled = await store.webhook_get(hook.id)
    assert disabled is not None and disabled.disabled_reason == "the receiver answered 410 Gone"


async def test_removing_an_endpoint_drops_its_deliveries(store: Store) -> None:
    hook = await register(store, "u1", ("job.created",))
    await new_job(store)
    [claimed] = await store.webhook_claim("w1", 30, 10, RULES)
    await new_job(store)
    assert await store.webhook_remove(hook.id)
    assert await store.webhook_deliveries(hook.id) == []
    assert await store.webhook_claim("w1", 30, 10, RULES) == []
    with pytest.raises(NotFound):
        await store.webhook_report(claimed.delivery.id, "w1", OK, RULES)
