"""Per-user quotas over HTTP, on both stores (issue 14 item 4): export bytes held (413),
export retention (422), unfinished container jobs (429, a bulk creation refused whole);
each answer names the limit, its value and the usage; admins are exempt; jobs' own
exports count too."""

from __future__ import annotations

from typing import Any

import pytest

from src.config import Settings
from src.services.errors import ExportQuotaExceeded
from src.services.job_types import sample
from tests.integration.conftest import Api

#: Bytes of unexpired exports a user may hold here.
QUOTA = 2500
#: Unfinished container jobs a user may have here.
CAP = 12
ROWS = [{"n": index, "text": "x" * 20} for index in range(20)]  # 771 bytes as JSON


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "bulkjobs_user_max_export_bytes": QUOTA,
            "bulkjobs_max_export_retention_hours": 48,
            "bulkjobs_user_max_unfinished_container_jobs": CAP,
        }
    )


@pytest.fixture
def embedded_worker() -> bool:
    return False  # jobs stay pending: the exports are made over HTTP


async def new_job(api: Api, headers: dict[str, str] | None = None) -> str:
    body = {"job_type": "sample", "job_data": {"items": 1, "delay_ms": 0}}
    response = await api.client.post("/bulk-jobs", json=body, headers=headers or api.alice)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


async def export(api: Api, job_id: str, headers: dict[str, str], **body: Any) -> Any:
    values = {"export_format": "json", "data": ROWS} | body
    return await api.client.post(f"/bulk-jobs/{job_id}/exports", json=values, headers=headers)


def files(api: Api, job_id: str) -> list[str]:
    folder = api.manager.settings.bulk_export_path / job_id
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


async def test_export_bytes_past_the_quota_are_a_413_naming_it(api: Api) -> None:
    job_id = await new_job(api)
    sizes = []
    for _ in range(3):
        response = await export(api, job_id, api.alice)
        assert response.status_code == 201, response.text
        sizes.append(response.json()["size_bytes"])
    refused = await export(api, job_id, api.alice)
    assert refused.status_code == 413, refused.text
    body = refused.json()
    assert body["error"] == "ExportQuotaExceeded"
    assert (body["limit"], body["limit_value"]) == ("BULKJOBS_USER_MAX_EXPORT_BYTES", QUOTA)
    assert body["usage"] == sum(sizes)
    assert "BULKJOBS_USER_MAX_EXPORT_BYTES" in body["detail"]
    assert len(files(api, job_id)) == 3  # nothing of the refused export is left
    other = await export(api, await new_job(api, api.bob), api.bob)
    assert other.status_code == 201  # another user's bytes are theirs
    admin = await export(api, job_id, api.admin)
    assert admin.status_code == 201  # admins are exempt


async def test_an_export_larger_than_the_room_left_is_stopped_while_written(api: Api) -> None:
    job_id = await new_job(api)
    big = [{"n": index, "text": "y" * 100} for index in range(40)]  # about 4.5 KB
    refused = await export(api, job_id, api.alice, data=big)
    assert refused.status_code == 413, refused.text
    assert refused.json()["limit"] == "BULKJOBS_USER_MAX_EXPORT_BYTES"
    assert files(api, job_id) == []


async def test_retention_past_the_cap_is_a_422_naming_the_field(api: Api) -> None:
    job_id = await new_job(api)
    refused = await export(api, job_id, api.alice, expires_in_hours=49)
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == "expires_in_hours"
    assert "48" in refused.json()["detail"]
    assert "BULKJOBS_MAX_EXPORT_RETENTION_HOURS" in refused.json()["detail"]
    assert (await export(api, job_id, api.alice, expires_in_hours=48)).status_code == 201
    assert (await export(api, job_id, api.admin, expires_in_hours=24 * 300)).status_code == 201


async def mock_host(api: Api) -> None:
    await api.app.state.containers.create_host(name="mock-q", executor_type="mock")


async def test_unfinished_container_jobs_past_the_cap_are_a_429(api: Api) -> None:
    await mock_host(api)
    bulk = {"docker_image": "alpine", "count": CAP - 2, "host": "mock-q", "batch_size": 3}
    assert (await api.client.post("/container-jobs/bulk", json=bulk, headers=api.alice)).is_success
    one = {"image": "alpine", "host": "mock-q"}
    for _ in range(2):
        assert (await api.client.post("/container-jobs", json=one, headers=api.alice)).is_success
    refused = await api.client.post("/container-jobs", json=one, headers=api.alice)
    assert refused.status_code == 429, refused.text
    body = refused.json()
    assert body["error"] == "ContainerQuotaExceeded"
    assert (body["limit"], body["limit_value"], body["usage"]) == (
        "BULKJOBS_USER_MAX_UNFINISHED_CONTAINER_JOBS",
        CAP,
        CAP,
    )
    admin = await api.client.post("/container-jobs", json=one, headers=api.admin)
    assert admin.status_code == 201


async def test_a_bulk_creation_past_the_cap_is_refused_whole(api: Api) -> None:
    await mock_host(api)
    bulk = {"docker_image": "alpine", "count": CAP + 1, "host": "mock-q", "batch_size": 2}
    refused = await api.client.post("/container-jobs/bulk", json=bulk, headers=api.alice)
    assert refused.status_code == 429, refused.text
    assert refused.json()["requested"] == CAP + 1
    listed = await api.client.get("/container-jobs", headers=api.alice)
    assert listed.json() == []
    admin = await api.client.post("/container-jobs/bulk", json=bulk, headers=api.admin)
    assert admin.status_code == 201 and admin.json()["created"] == CAP + 1


async def test_the_python_api_and_jobs_own_exports_obey_the_quota(api: Api) -> None:
    job_id = await new_job(api)
    for _ in range(3):
        await api.manager.create_export(job_id, "json", ROWS)
    with pytest.raises(ExportQuotaExceeded):
        await api.manager.create_export(job_id, "json", ROWS)
    await api.manager.create_export(job_id, "json", ROWS, limited=False)
    body = {"job_type": "sample", "job_data": {"items": 200, "delay_ms": 0}}
    created = await api.client.post("/bulk-jobs", json=body, headers=api.bob)
    report = await api.manager.process_job_with_stages(created.json()["job_id"], sample.PROCESSORS)
    assert report is not None and report.status == "failed"
    assert "BULKJOBS_USER_MAX_EXPORT_BYTES" in (report.error_message or "")
