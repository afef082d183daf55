"""Retrying only the failed items of a job (POST /bulk-jobs/{id}/retry), for each built-in job
type, on both stores: the new job is linked by `retry_of` and runs over those items alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from src.config import Settings
from src.services.domain import BulkJobStage, BulkJobStatus
from src.services.errors import Conflict
from src.services.job_types import sample
from src.services.job_types.registry import JobTypeRegistry
from src.services.runner import stage_output_path
from tests.integration.conftest import Api
from tests.loopback_http import QuietHandler, serve_http

SAMPLE = {"job_type": "sample", "job_data": {"items": 20, "delay_ms": 0, "fail_every": 5}}


class Pages(QuietHandler):
    def do_GET(self) -> None:
        status = 200 if self.path.startswith("/ok") else 404
        self.reply(status, f"<title>{self.path}</title>".encode())


@pytest.fixture(scope="module")
def pages() -> Iterator[str]:
    with serve_http(Pages) as base:
        yield base


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The loopback test server allowed, as a deployment would allow an internal host."""
    return settings.model_copy(update={"bulkjobs_http_fetch_allowed_hosts": "127.0.0.1/32"})


async def finished(api: Api, body: dict[str, Any], user: dict[str, str]) -> dict[str, Any]:
    response = await api.client.post("/bulk-jobs", json=body, headers=user)
    assert response.status_code == 202, response.text
    return await api.wait_for(response.json()["job_id"], headers=user)


async def retried(api: Api, job_id: str, user: dict[str, str]) -> dict[str, Any]:
    response = await api.client.post(f"/bulk-jobs/{job_id}/retry", headers=user)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "pending"
    return await api.wait_for(accepted["job_id"], headers=user)


def stage(job: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in job["stages"] if s["name"] == name)
    return found


async def export_rows(api: Api, job: dict[str, Any], user: dict[str, str]) -> Any:
    export_id = job["exports"][0]["export_id"]
    download = await api.client.get(f"/bulk-jobs/{job['job_id']}/export/{export_id}", headers=user)
    assert download.status_code == 200
    return json.loads(download.content)


async def test_a_sample_retry_runs_only_the_failed_items(api: Api) -> None:
    first = await finished(api, SAMPLE, api.alice)
    assert first["items_failed"] == 4 and first["retry_of"] is None
    retry = await retried(api, first["job_id"][:10], api.alice)  # a start of the id will do
    assert retry["retry_of"] == first["job_id"]
    assert retry["user_id"] == "alice"
    assert retry["job_data"]["item_numbers"] == [5, 10, 15, 20]
    # Each fails by its number, so each fails again, and says so.
    fetch = stage(retry, "content_fetch")
    assert (fetch["items_total"], fetch["items_completed"], fetch["items_failed"]) == (4, 0, 4)
    rows = await export_rows(api, retry, api.alice)
    assert [row["item"] for row in rows] == [5, 10, 15, 20]
    listed = (await api.client.get("/bulk-jobs", headers=api.alice)).json()
    assert [job["retry_of"] for job in listed] == [first["job_id"], None]


async def test_an_http_fetch_retry_fetches_the_failed_urls_again(api: Api, pages: str) -> None:
    urls = [f"{pages}/ok/1", f"{pages}/missing/2", f"{pages}/ok/3", f"{pages}/missing/4"]
    body = {"job_type": "http_fetch", "job_data": {"urls": urls, "export_format": "json"}}
    first = await finished(api, body, api.alice)
    assert first["status"] == "completed", first["error_message"]
    retry = await retried(api, first["job_id"], api.alice)
    assert retry["job_data"]["urls"] == [urls[1], urls[3]]
    assert retry["job_data"]["export_format"] == "json"
    rows = await export_rows(api, retry, api.alice)
    assert [(row["url"], row["error"]) for row in rows] == [
        (urls[1], "HTTP 404"),
        (urls[3], "HTTP 404"),
    ]


async def test_an_http_fetch_retry_reads_the_recorded_failures_once_the_results_are_gone(
    api: Api, pages: str
) -> None:
    urls = [f"{pages}/ok/1", f"{pages}/missing/2"]
    first = await finished(api, {"job_type": "http_fetch", "job_data": {"urls": urls}}, api.alice)
    output = stage_output_path(
        api.manager.settings.bulk_export_path, first["job_id"], BulkJobStage.CONTENT_FETCH
    )
    output.unlink()  # as the sweep removes it once the job's exports are gone
    retry = await retried(api, first["job_id"], api.alice)
    assert retry["job_data"]["urls"] == [urls[1]]


async def test_an_http_fetch_retry_refuses_when_which_urls_failed_is_lost(
    api: Api, pages: str
) -> None:
    urls = [f"{pages}/missing/{n}" for n in range(25)]  # more than a stage records
    first = await finished(api, {"job_type": "http_fetch", "job_data": {"urls": urls}}, api.alice)
    output = stage_output_path(
        api.manager.settings.bulk_export_path, first["job_id"], BulkJobStage.CONTENT_FETCH
    )
    output.unlink()
    response = await api.client.post(f"/bulk-jobs/{first['job_id']}/retry", headers=api.alice)
    assert response.status_code == 409
    assert "no longer known" in response.json()["detail"]


async def test_a_container_batch_retry_keeps_each_items_index(api: Api) -> None:
    data = {
        "image": "local",
        "executor_type": "local",
        "command": 'echo "{\\"index\\": $ITEM_INDEX}"; test "$ITEM" = ok || exit 3',
        "items": ["ok", "bad", "ok", "worse"],
        "export_format": "json",
    }
    first = await finished(api, {"job_type": "container_batch", "job_data": data}, api.admin)
    assert first["status"] == "completed", first["error_message"]
    assert first["items_failed"] == 2
    retry = await retried(api, first["job_id"], api.admin)
    assert retry["job_data"]["items"] == ["bad", "worse"]
    assert retry["job_data"]["item_indexes"] == [1, 3]
    rows = await export_rows(api, retry, api.admin)
    assert [(row["index"], row["output"], row["exit_code"]) for row in rows] == [
        (1, {"index": 1}, 3),
        (3, {"index": 3}, 3),
    ]


async def test_a_job_without_failed_items_is_409(api: Api) -> None:
    body = {"job_type": "sample", "job_data": {"items": 3, "delay_ms": 0}}
    job = await finished(api, body, api.alice)
    response = await api.client.post(f"/bulk-jobs/{job['job_id']}/retry", headers=api.alice)
    assert response.status_code == 409
    assert "no failed items" in response.json()["detail"]


async def test_a_running_job_is_409(api: Api) -> None:
    body = {"job_type": "sample", "job_data": {"items": 1000, "delay_ms": 20, "fail_every": 2}}
    created = await api.client.post("/bulk-jobs", json=body, headers=api.alice)
    job_id = created.json()["job_id"]
    await api.wait_for(job_id, lambda job: job["items_failed"] > 0)
    response = await api.client.post(f"/bulk-jobs/{job_id}/retry", headers=api.alice)
    assert response.status_code == 409
    assert "still" in response.json()["detail"]
    await api.client.post(f"/bulk-jobs/{job_id}/cancel", headers=api.alice)
    await api.wait_for(job_id)


async def test_a_cancelled_job_retries_the_items_that_failed_before(api: Api) -> None:
    body = {"job_type": "sample", "job_data": {"items": 1000, "delay_ms": 5, "fail_every": 2}}
    created = await api.client.post("/bulk-jobs", json=body, headers=api.alice)
    job_id = created.json()["job_id"]
    await api.wait_for(job_id, lambda job: job["items_failed"] >= 3)
    await api.client.post(f"/bulk-jobs/{job_id}/cancel", headers=api.alice)
    cancelled = await api.wait_for(job_id)
    failed = stage(cancelled, "content_fetch")["items_failed"]
    retry = await retried(api, job_id, api.alice)
    numbers = retry["job_data"]["item_numbers"]
    assert numbers == list(range(2, 2 * failed + 1, 2))


async def test_only_the_owner_or_an_admin_may_retry(api: Api) -> None:
    first = await finished(api, SAMPLE, api.alice)
    refused = await api.client.post(f"/bulk-jobs/{first['job_id']}/retry", headers=api.bob)
    assert refused.status_code == 404  # another user's job reads as none
    retry = await retried(api, first["job_id"], api.admin)
    assert (retry["user_id"], retry["retry_of"]) == ("alice", first["job_id"])


async def test_a_retry_counts_against_the_rate_limit(api: Api) -> None:
    first = await finished(api, SAMPLE, api.alice)
    for _ in range(api.manager.settings.bulk_rate_limit_max_jobs - 1):
        assert (await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)).is_success
    response = await api.client.post(f"/bulk-jobs/{first['job_id']}/retry", headers=api.alice)
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) > 0
    # An admin's retry is not limited, as an admin's job is not.
    by_admin = await api.client.post(f"/bulk-jobs/{first['job_id']}/retry", headers=api.admin)
    assert by_admin.status_code == 202


async def test_a_job_of_a_type_the_server_does_not_know_is_409(api: Api) -> None:
    manager = api.manager
    job_id = await manager.create_bulk_job("handmade", "alice", {}, ["content_fetch"])
    await manager.start_stage(job_id, "content_fetch", items_total=2)
    await manager.complete_stage(job_id, "content_fetch", items_completed=1, items_failed=1)
    response = await api.client.post(f"/bulk-jobs/{job_id}/retry", headers=api.alice)
    assert response.status_code == 409
    assert "'handmade'" in response.json()["detail"]


async def test_a_type_without_the_hook_is_409_naming_why(api: Api) -> None:
    registry = JobTypeRegistry()
    registry.register("handmade", ["content_fetch"], validate=sample.validate)
    manager = api.manager
    job_id = await manager.create_bulk_job("handmade", "alice", {}, ["content_fetch"])
    await manager.start_stage(job_id, "content_fetch", items_total=2)
    await manager.complete_stage(job_id, "content_fetch", items_completed=1, items_failed=1)
    with pytest.raises(Conflict, match="retry_data"):
        await manager.retry_failed(job_id, job_types=registry)
    job = await manager.get_job(job_id)
    assert job is not None and job.status == BulkJobStatus.COMPLETED


@pytest.mark.parametrize(
    ("job_type", "job_data", "field"),
    [
        ("sample", {"items": 5, "item_numbers": [6]}, "job_data.item_numbers"),
        ("sample", {"items": 5, "item_numbers": []}, "job_data.item_numbers"),
        (
            "container_batch",
            {"image": "local", "command": "true", "items": [1, 2], "item_indexes": [0]},
            "job_data.item_indexes",
        ),
        (
            "container_batch",
            {"image": "local", "command": "true", "items": [1], "item_indexes": [-1]},
            "job_data.item_indexes",
        ),
    ],
)
async def test_the_retry_fields_are_checked_by_name(
    api: Api, job_type: str, job_data: dict[str, Any], field: str
) -> None:
    body = {"job_type": job_type, "job_data": job_data}
    response = await api.client.post("/bulk-jobs", json=body, headers=api.admin)
    assert response.status_code == 422
    assert response.json()["field"] == field
