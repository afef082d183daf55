"""The HTTP API end to end: start a job, watch it, download its export, and be refused."""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import pytest

from src.services.worker.scheduler import Scheduler
from src.services.worker.service import build_registry
from tests.integration.conftest import Api

SAMPLE = {"job_type": "sample", "job_data": {"items": 20, "delay_ms": 1, "fail_every": 5}}


async def test_health_needs_no_token(api: Api) -> None:
    response = await api.client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}]
)
async def test_missing_or_bad_token_is_401(api: Api, headers: dict[str, str]) -> None:
    response = await api.client.get("/bulk-jobs", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_start_watch_and_download(api: Api) -> None:
    response = await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    assert response.json()["status"] == "pending"

    seen_statuses = set()

    def done(job: dict[str, object]) -> bool:
        seen_statuses.add(job["status"])
        return job["status"] in ("completed", "failed")

    job = await api.wait_for(job_id, done)
    assert job["status"] == "completed", job["error_message"]
    assert [stage["status"] for stage in job["stages"]] == ["completed"] * 4
    fetch = job["stages"][1]
    assert (fetch["items_total"], fetch["items_completed"], fetch["items_failed"]) == (20, 16, 4)
    assert job["progress"] == 1.0

    [export] = (await api.client.get(f"/bulk-jobs/{job_id}/exports", headers=api.alice)).json()
    download = await api.client.get(
        f"/bulk-jobs/{job_id}/export/{export['export_id']}", headers=api.alice
    )
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("application/json")
    assert export["filename"] in download.headers["content-disposition"]
    rows = json.loads(download.content)
    assert len(rows) == 20
    assert sum(row["status"] == "failed" for row in rows) == 4


async def test_list_own_jobs_with_filters(api: Api) -> None:
    first = (await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)).json()["job_id"]
    await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.bob)
    await api.wait_for(first)
    jobs = (await api.client.get("/bulk-jobs", headers=api.alice)).json()
    assert [job["job_id"] for job in jobs] == [first]
    assert (await api.client.get("/bulk-jobs?status=pending", headers=api.alice)).json() == []
    assert (await api.client.get("/bulk-jobs?limit=0", headers=api.alice)).status_code == 422


async def test_other_users_job_and_export_are_404(api: Api) -> None:
    job_id = (await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)).json()["job_id"]
    job = await api.wait_for(job_id)
    export_id = job["exports"][0]["export_id"]
    for path in (
        f"/bulk-jobs/{job_id}",
        f"/bulk-jobs/{job_id}/status",
        f"/bulk-jobs/{job_id}/exports",
        f"/bulk-jobs/{job_id}/export/{export_id}",
    ):
        assert (await api.client.get(path, headers=api.bob)).status_code == 404, path
    cancel = await api.client.post(f"/bulk-jobs/{job_id}/cancel", headers=api.bob)
    assert cancel.status_code == 404
    assert (await api.client.get(f"/bulk-jobs/{job_id}", headers=api.admin)).status_code == 200


async def test_export_id_is_looked_up_never_joined(api: Api) -> None:
    job_id = (await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)).json()["job_id"]
    await api.wait_for(job_id)
    for trick in ("..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "stages"):
        response = await api.client.get(f"/bulk-jobs/{job_id}/export/{trick}", headers=api.alice)
        assert response.status_code == 404


async def test_cancel_a_running_job(api: Api) -> None:
    slow = {"job_type": "sample", "job_data": {"items": 100_000, "delay_ms": 5}}
    job_id = (await api.client.post("/bulk-jobs", json=slow, headers=api.alice)).json()["job_id"]
    await api.wait_for(job_id, lambda job: job["stages"][1]["items_completed"] > 3)
    response = await api.client.post(
        f"/bulk-jobs/{job_id}/cancel", json={"reason": "changed my mind"}, headers=api.alice
    )
    assert response.status_code == 200
    job = await api.wait_for(job_id)
    assert job["status"] == "cancelled"
    assert job["error_message"] == "changed my mind"
    again = await api.client.post(f"/bulk-jobs/{job_id}/cancel", headers=api.alice)
    assert again.status_code == 409


async def test_rate_limit_429_with_retry_after(api: Api) -> None:
    started = time.time()
    codes = []
    for _ in range(5):
        response = await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)
        codes.append(response.status_code)
    refused = await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)
    assert codes == [202] * 5
    assert refused.status_code == 429
    retry_after = int(refused.headers["retry-after"])
    elapsed = time.time() - started
    assert 3600 - elapsed - 1 <= retry_after <= 3600
    assert refused.json()["retry_after_s"] == retry_after
    other = await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.bob)
    assert other.status_code == 202


async def test_twenty_concurrent_creates_admit_exactly_five(api: Api) -> None:
    responses = await asyncio.gather(
        *(api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice) for _ in range(20))
    )
    codes = sorted(response.status_code for response in responses)
    assert codes == [202] * 5 + [429] * 15
    retry_afters = {
        int(response.headers["retry-after"])
        for response in responses
        if response.status_code == 429
    }
    assert all(3598 <= value <= 3600 for value in retry_afters)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"job_type": "sample", "job_data": []}, "job_data"),
        ({"job_type": 5, "job_data": {}}, "job_type"),
        ({"job_type": "sample", "stages": ["no_such_stage"]}, "stages"),
        ({"job_type": "sample", "stages": []}, "stages"),
        ({"job_type": "sample", "priority": "urgent"}, "priority"),
        ({"job_type": "sample", "estimated_duration_minutes": -1}, "estimated_duration_minutes"),
        ({"job_type": "sample", "job_data": {"items": -5}}, "job_data.items"),
        ({"job_type": "no_such_type"}, "job_type"),
        ({"job_type": "sample", "job_data": {"blob": "x" * 300_000}}, "job_data"),
        ({"job_type": "sample", "surprise": 1}, "surprise"),
        ({"job_type": "http_fetch", "job_data": {"urls": ["not a url"]}}, "job_data.urls.0"),
    ],
)
async def test_malformed_bodies_are_422_naming_the_field(
    api: Api, body: dict[str, object], field: str
) -> None:
    response = await api.client.post("/bulk-jobs", json=body, headers=api.alice)
    assert response.status_code == 422, response.text
    assert field in response.text


async def test_invalid_json_is_422(api: Api) -> None:
    response = await api.client.post(
        "/bulk-jobs",
        content=b"{not json",
        headers={**api.alice, "content-type": "application/json"},
    )
    assert response.status_code == 422


async def test_bulk_process_acts_for_self_unless_admin(api: Api) -> None:
    body = {"job_type": "sample", "user_id": "alice", "job_data": {"items": 3, "delay_ms": 0}}
    response = await api.client.post("/bulk-process", json=body, headers=api.alice)
    assert response.status_code == 202
    assert response.json()["status"] == "started"
    forged = await api.client.post(
        "/bulk-process", json={**body, "user_id": "bob"}, headers=api.alice
    )
    assert forged.status_code == 403
    on_behalf = await api.client.post(
        "/bulk-process", json={**body, "user_id": "bob"}, headers=api.admin
    )
    assert on_behalf.status_code == 202
    job = await api.wait_for(on_behalf.json()["job_id"], headers=api.bob)
    assert job["user_id"] == "bob" and job["status"] == "completed"


async def test_job_types_are_listed(api: Api) -> None:
    types = (await api.client.get("/job-types", headers=api.alice)).json()
    assert {entry["job_type"] for entry in types} >= {"http_fetch", "sample"}


@pytest.mark.parametrize("embedded_worker", [False])
async def test_without_the_embedded_worker_the_api_only_enqueues(api: Api) -> None:
    response = await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)
    job_id = response.json()["job_id"]
    # The ASGI call is over (background tasks included) and nothing has run the job.
    job = (await api.client.get(f"/bulk-jobs/{job_id}", headers=api.alice)).json()
    assert (job["status"], api.app.state.worker) == ("pending", None)
    worker = Scheduler(
        "a-worker", ["bulk_job"], 4, 4, await api.manager.store(), await build_registry(api.manager)
    )
    await asyncio.wait_for(worker.run(burst=True), 30)
    job = (await api.client.get(f"/bulk-jobs/{job_id}", headers=api.alice)).json()
    assert job["status"] == "completed"


async def test_index_page_is_served(api: Api) -> None:
    response = await api.client.get("/?token=whatever")
    assert response.status_code == 200
    assert "bulkjobs" in response.text


async def test_create_export_over_http_and_download_it(api: Api) -> None:
    job_id = (await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)).json()["job_id"]
    rows = [{"id": 1, "nested": {"x": "a"}}, {"id": 2, "nested": {"x": "b"}}]
    body = {"export_format": "csv", "data": rows, "filename_prefix": "mine"}
    created = await api.client.post(f"/bulk-jobs/{job_id}/exports", json=body, headers=api.alice)
    assert created.status_code == 201, created.text
    export = created.json()
    assert export["filename"].startswith("mine_") and export["filename"].endswith(".csv")
    download = await api.client.get(
        f"/bulk-jobs/{job_id}/export/{export['export_id']}", headers=api.alice
    )
    assert download.text.splitlines() == ['"id","nested.x"', '1,"a"', '2,"b"']
    stolen = await api.client.post(f"/bulk-jobs/{job_id}/exports", json=body, headers=api.bob)
    assert stolen.status_code == 404


@pytest.mark.parametrize("hours", [0, -1, 24 * 365 + 1])
async def test_export_expiry_out_of_range_is_422_naming_the_field(api: Api, hours: float) -> None:
    job_id = (await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)).json()["job_id"]
    body = {"export_format": "json", "data": [1], "expires_in_hours": hours}
    response = await api.client.post(f"/bulk-jobs/{job_id}/exports", json=body, headers=api.alice)
    assert response.status_code == 422, response.text
    assert "expires_in_hours" in response.text


@pytest.mark.parametrize("fmt", ["json", "csv", "zip"])
async def test_oversize_export_is_413_and_leaves_no_file(api: Api, fmt: str) -> None:
    job_id = (await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)).json()["job_id"]
    await api.wait_for(job_id)
    limit = api.manager.settings.max_export_bytes
    big = "x" * 1000
    # Random hex for the ZIP, so that compression cannot bring it under the limit.
    data: object = (
        {"big.txt": secrets.token_hex(limit)}
        if fmt == "zip"
        else [{"i": i, "text": big} for i in range(limit // 1000 + 10)]
    )
    before = sorted(p.name for p in (api.manager.settings.bulk_export_path / job_id).iterdir())
    response = await api.client.post(
        f"/bulk-jobs/{job_id}/exports", json={"export_format": fmt, "data": data}, headers=api.alice
    )
    assert response.status_code == 413
    assert "size limit" in response.json()["detail"]
    after = sorted(p.name for p in (api.manager.settings.bulk_export_path / job_id).iterdir())
    assert after == before
