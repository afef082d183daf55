"""The webhook routes on both stores: registration (the secret once), ownership, validation
naming the field, and a real job's events arriving signed at a receiver on 127.0.0.1 through
the server's embedded worker; failed deliveries and a disabled endpoint visible in the API."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from src.config import Settings
from tests.integration.conftest import Api
from tests.webhook_receiver import Receiver, eventually, until

SAMPLE = {"job_type": "sample", "job_data": {"items": 3, "delay_ms": 1}}


@pytest.fixture
def rules(request: pytest.FixtureRequest) -> dict[str, float]:
    """Settings a test changes (through indirect parametrization)."""
    return getattr(request, "param", {})


@pytest.fixture
def settings(settings: Settings, rules: dict[str, float]) -> Settings:
    update = {
        "bulkjobs_http_fetch_allowed_hosts": "127.0.0.1",
        "bulkjobs_webhook_retry_base_s": 0.05,
        "bulkjobs_webhook_retry_cap_s": 0.1,
        "bulkjobs_lease_seconds": 2,
    }
    return settings.model_copy(update=update | rules)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    made = Receiver()
    yield made
    made.stop()


async def register(api: Api, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    response = await api.client.post("/webhooks", json=body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_register_list_show_and_delete(api: Api) -> None:
    body = {"url": "https://hooks.example.com/x", "events": ["job.completed"], "description": "ci"}
    created = await register(api, body, api.alice)
    assert created["secret"].startswith("whsec_")
    assert created["status"] == "active" and created["user_id"] == "alice"
    listed = (await api.client.get("/webhooks", headers=api.alice)).json()
    assert [hook["id"] for hook in listed] == [created["id"]]
    assert "secret" not in listed[0]
    shown = await api.client.get(f"/webhooks/{created['id']}", headers=api.alice)
    assert shown.json()["description"] == "ci" and "secret" not in shown.json()
    assert (await api.client.get(f"/webhooks/{created['id']}", headers=api.bob)).status_code == 404
    assert (await api.client.get("/webhooks", headers=api.bob)).json() == []
    everyone = (await api.client.get("/webhooks", headers=api.admin)).json()
    assert [hook["id"] for hook in everyone] == [created["id"]]
    gone = await api.client.delete(f"/webhooks/{created['id']}", headers=api.bob)
    assert gone.status_code == 404
    gone = await api.client.delete(f"/webhooks/{created['id']}", headers=api.alice)
    assert gone.status_code == 204
    assert (
        await api.client.get(f"/webhooks/{created['id']}", headers=api.alice)
    ).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.com/x", "events": ["job.created"]}, "url"),
        ({"url": "https:///nohost", "events": ["job.created"]}, "url"),
        ({"url": "not a url at all", "events": ["job.created"]}, "url"),
        ({"url": "https://example.com/x", "events": ["job.exploded"]}, "events"),
        ({"url": "https://example.com/x", "events": []}, "events"),
        ({"url": "https://example.com/x"}, "events"),
        ({"events": ["job.created"]}, "url"),
    ],
)
async def test_bad_input_is_a_422_naming_the_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    response = await api.client.post("/webhooks", json=body, headers=api.alice)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


async def test_only_admins_register_for_all_users(api: Api) -> None:
    body = {"url": "https://example.com/x", "events": ["job.created"], "all_users": True}
    response = await api.client.post("/webhooks", json=body, headers=api.alice)
    assert response.status_code == 403
    created = await register(api, body, api.admin)
    assert created["all_users"] is True


async def test_a_jobs_events_arrive_signed(api: Api, receiver: Receiver) -> None:
    receiver.start()
    events = ["job.created", "job.stage_completed", "job.completed"]
    created = await register(api, {"url": receiver.url, "events": events}, api.alice)
    receiver.secret = created["secret"]
    others = await register(api, {"url": receiver.url, "events": events}, api.bob)
    response = await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)
    job_id = response.json()["job_id"]
    await api.wait_for(job_id)
    deliveries_url = f"/webhooks/{created['id']}/deliveries"

    async def all_delivered() -> bool:
        shown = (await api.client.get(deliveries_url, headers=api.alice)).json()
        return bool(shown) and {d["status"] for d in shown} == {"delivered"}

    await until(lambda: any(p and p["type"] == "job.completed" for p in receiver.payloads()))
    await eventually(all_delivered)
    payloads = receiver.payloads()
    assert all(payload is not None for payload in payloads), "a signature did not verify"
    # Deliveries are sent concurrently: they may arrive in any order.
    kinds = Counter(payload["type"] for payload in payloads)
    assert kinds["job.created"] == 1 and kinds["job.completed"] == 1
    assert kinds["job.stage_completed"] >= 1
    assert {payload["data"]["job_id"] for payload in payloads} == {job_id}
    shown = (await api.client.get(deliveries_url, headers=api.alice)).json()
    assert sorted(d["id"] for d in shown) == sorted(receiver.counts())
    assert shown[-1]["payload"]["type"] == "job.created"  # newest first
    bobs = (await api.client.get(f"/webhooks/{others['id']}/deliveries", headers=api.bob)).json()
    assert bobs == []  # another user's job sends nothing to bob's endpoint


async def wait_for_status(api: Api, url: str, field: str, wanted: str) -> dict[str, Any]:
    while True:
        found: Any = (await api.client.get(url, headers=api.alice)).json()
        item = found[0] if isinstance(found, list) and found else found
        if isinstance(item, dict) and item.get(field) == wanted:
            return item
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("rules", [{"bulkjobs_webhook_retry_window_s": 0.3}], indirect=True)
async def test_a_delivery_past_its_retry_window_is_shown_failed(
    api: Api, receiver: Receiver
) -> None:
    receiver.script = lambda request, seen: 500
    receiver.start()
    created = await register(api, {"url": receiver.url, "events": ["job.created"]}, api.alice)
    receiver.secret = created["secret"]
    hook_url = f"/webhooks/{created['id']}"
    await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)
    failed = await wait_for_status(api, f"{hook_url}/deliveries", "status", "failed")
    assert failed["last_status_code"] == 500 and failed["attempts"] >= 2
    assert failed["last_error"].startswith("not delivered within")
    assert len(receiver.received) == failed["attempts"]
    listed = await api.client.get(f"{hook_url}/deliveries?status=failed", headers=api.alice)
    assert [d["id"] for d in listed.json()] == [failed["id"]]
    shown = (await api.client.get(hook_url, headers=api.alice)).json()
    assert shown["status"] == "active" and shown["failing_since"] is not None
    bad = await api.client.get(f"{hook_url}/deliveries?status=lost", headers=api.alice)
    assert bad.status_code == 422 and bad.json()["field"] == "status"


@pytest.mark.parametrize("rules", [{"bulkjobs_webhook_disable_after_s": 0.2}], indirect=True)
async def test_an_endpoint_failing_too_long_is_disabled_and_enabled_again(
    api: Api, receiver: Receiver
) -> None:
    receiver.script = lambda request, seen: 503
    receiver.start()
    created = await register(api, {"url": receiver.url, "events": ["job.created"]}, api.alice)
    receiver.secret = created["secret"]
    hook_url = f"/webhooks/{created['id']}"
    await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)
    disabled = await wait_for_status(api, hook_url, "status", "disabled")
    assert "every delivery failed" in disabled["disabled_reason"]
    assert "HTTP 503" in disabled["disabled_reason"]
    [delivery] = (await api.client.get(f"{hook_url}/deliveries", headers=api.alice)).json()
    assert delivery["status"] == "failed"
    assert delivery["last_error"].startswith("endpoint disabled")
    enabled = (await api.client.post(f"{hook_url}/enable", headers=api.alice)).json()
    assert enabled["status"] == "active" and enabled["disabled_reason"] is None
    assert (await api.client.post(f"{hook_url}/enable", headers=api.bob)).status_code == 404
