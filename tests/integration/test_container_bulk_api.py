"""The bulk container job routes over HTTP, on both stores: owners, admins and refusals."""

from __future__ import annotations

from typing import Any

import pytest

from src.services.containers.service import ContainerJobService
from src.services.domain.containers import ExecutorHost
from tests.integration.conftest import Api

BULK = "/container-jobs/bulk"


@pytest.fixture
def embedded_worker() -> bool:
    return False  # jobs stay where these tests put them


@pytest.fixture
async def bulk_api(api: Api) -> Api:
    return api


def containers(api: Api) -> ContainerJobService:
    service: ContainerJobService = api.app.state.containers
    return service


async def mock_host(api: Api, name: str, **fields: Any) -> ExecutorHost:
    return await containers(api).create_host(name=name, executor_type="mock", **fields)


async def create(api: Api, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    values = {"docker_image": "alpine", "count": 3, "host": "mock-a"} | body
    response = await api.client.post(BULK, json=values, headers=headers)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_create_in_bulk(bulk_api: Api) -> None:
    host = await mock_host(bulk_api, "mock-a")
    result = await create(bulk_api, bulk_api.alice, count=250, batch_size=100, command="echo")
    assert result["created"] == 250 and result["errors"] == []
    job = await containers(bulk_api).get_job(result["job_ids"][0], "alice")
    assert (job.host_id, job.command, job.status) == (host.id, "echo", "pending")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"count": 10_001}, 422),
        ({"count": 0}, 422),
        ({"docker_image": ""}, 422),
        ({"batch_size": 501}, 422),
        ({"surprise": 1}, 422),
    ],
)
async def test_create_rejects_bad_requests(
    bulk_api: Api, body: dict[str, Any], status: int
) -> None:
    values = {"docker_image": "alpine", "count": 3, "host": "mock-a"} | body
    response = await bulk_api.client.post(BULK, json=values, headers=bulk_api.alice)
    assert response.status_code == status


async def test_create_that_makes_nothing_is_422_with_reasons(bulk_api: Api) -> None:
    values = {"docker_image": "alpine", "count": 2, "host": "local"}
    response = await bulk_api.client.post(BULK, json=values, headers=bulk_api.alice)
    assert response.status_code == 422
    assert response.json()["created"] == 0 and "isolation" in response.json()["errors"][0]
    admin = await bulk_api.client.post(BULK, json=values, headers=bulk_api.admin)
    assert admin.status_code == 201 and admin.json()["created"] == 2


async def test_routes_need_a_token(bulk_api: Api) -> None:
    response = await bulk_api.client.post(f"{BULK}/status", json={})
    assert response.status_code == 401


async def test_owner_changes_only_own_jobs(bulk_api: Api) -> None:
    await mock_host(bulk_api, "mock-a")
    mine = (await create(bulk_api, bulk_api.alice))["job_ids"]
    theirs = (await create(bulk_api, bulk_api.bob, count=1))["job_ids"]
    body = {"job_ids": mine + theirs, "status": "cancelled", "reason": "not needed"}
    response = await bulk_api.client.post(f"{BULK}/status", json=body, headers=bulk_api.alice)
    assert response.status_code == 200
    assert response.json() == {"count": 3, "errors": {theirs[0]: "not found"}}
    job = await containers(bulk_api).get_job(mine[0])
    assert (job.status, job.status_message) == ("cancelled", "not needed")
    assert (await containers(bulk_api).get_job(theirs[0])).status == "pending"

    again = {"job_ids": mine + theirs, "status": "cancelled"}
    response = await bulk_api.client.post(f"{BULK}/status", json=again, headers=bulk_api.admin)
    assert response.json()["count"] == 1
    assert set(response.json()["errors"]) == set(mine)  # already cancelled


@pytest.mark.parametrize(
    "body",
    [
        {"job_ids": [], "status": "cancelled"},
        {"job_ids": ["x"] * 10_001, "status": "cancelled"},
        {"job_ids": ["x"], "status": "exploded"},
        {"job_ids": [""], "status": "cancelled"},
    ],
)
async def test_status_rejects_bad_requests(bulk_api: Api, body: dict[str, Any]) -> None:
    response = await bulk_api.client.post(f"{BULK}/status", json=body, headers=bulk_api.alice)
    assert response.status_code == 422


async def test_migrate(bulk_api: Api) -> None:
    await mock_host(bulk_api, "mock-a")
    target = await mock_host(bulk_api, "mock-b")
    await mock_host(bulk_api, "mock-off", is_active=False)
    mine = (await create(bulk_api, bulk_api.alice, count=2))["job_ids"]
    theirs = (await create(bulk_api, bulk_api.bob, count=1))["job_ids"]
    body = {"job_ids": mine + theirs, "target_host": "mock-b"}
    response = await bulk_api.client.post(f"{BULK}/migrate", json=body, headers=bulk_api.alice)
    assert response.json() == {"count": 2, "errors": {theirs[0]: "not found"}}
    assert (await containers(bulk_api).get_job(mine[0])).host_id == target.id

    off = {"job_ids": mine, "target_host": "mock-off"}
    response = await bulk_api.client.post(f"{BULK}/migrate", json=off, headers=bulk_api.alice)
    assert response.json()["count"] == 0
    assert all("unavailable" in error for error in response.json()["errors"].values())

    local = {"job_ids": mine, "target_host": "local"}
    response = await bulk_api.client.post(f"{BULK}/migrate", json=local, headers=bulk_api.alice)
    assert response.status_code == 403
    missing = {"job_ids": mine, "target_host": "nowhere"}
    response = await bulk_api.client.post(f"{BULK}/migrate", json=missing, headers=bulk_api.alice)
    assert response.status_code == 422


async def test_an_admin_cannot_move_a_users_job_onto_an_unisolated_host(bulk_api: Api) -> None:
    """Issue 14 item 3: the admin's migrate to `local` would have run alice's command as the
    service's user. It is refused per job (409 when nothing moved), and the job stays."""
    source = await mock_host(bulk_api, "mock-a")
    mine = (await create(bulk_api, bulk_api.alice, count=1))["job_ids"]
    admins = (await create(bulk_api, bulk_api.admin, count=1))["job_ids"]
    body = {"job_ids": mine, "target_host": "local"}
    response = await bulk_api.client.post(f"{BULK}/migrate", json=body, headers=bulk_api.admin)
    assert response.status_code == 409, response.text
    assert response.json()["count"] == 0
    reason = response.json()["errors"][mine[0]]
    assert "host local" in reason and "without isolation" in reason
    assert (await containers(bulk_api).get_job(mine[0])).host_id == source.id

    both = {"job_ids": mine + admins, "target_host": "local"}
    response = await bulk_api.client.post(f"{BULK}/migrate", json=both, headers=bulk_api.admin)
    assert response.status_code == 200
    assert response.json()["count"] == 1 and list(response.json()["errors"]) == mine
    assert (await containers(bulk_api).get_job(admins[0])).host_id == "local"


async def test_delete_with_and_without_force(bulk_api: Api) -> None:
    await mock_host(bulk_api, "mock-a")
    jobs = (await create(bulk_api, bulk_api.alice, count=2))["job_ids"]
    body: dict[str, Any] = {"job_ids": jobs}
    response = await bulk_api.client.post(f"{BULK}/delete", json=body, headers=bulk_api.alice)
    assert response.json()["count"] == 0 and set(response.json()["errors"]) == set(jobs)
    body["force"] = True
    response = await bulk_api.client.post(f"{BULK}/delete", json=body, headers=bulk_api.bob)
    assert response.json() == {"count": 0, "errors": dict.fromkeys(jobs, "not found")}
    response = await bulk_api.client.post(f"{BULK}/delete", json=body, headers=bulk_api.alice)
    assert response.json() == {"count": 2, "errors": {}}


async def test_cleanup_and_metrics_are_for_admins(bulk_api: Api) -> None:
    await mock_host(bulk_api, "mock-a")
    jobs = (await create(bulk_api, bulk_api.alice, count=2))["job_ids"]
    cancel = {"job_ids": jobs, "status": "cancelled"}
    await bulk_api.client.post(f"{BULK}/status", json=cancel, headers=bulk_api.alice)

    body = {"days_old": 0}
    response = await bulk_api.client.post(f"{BULK}/cleanup", json=body, headers=bulk_api.alice)
    assert response.status_code == 403
    response = await bulk_api.client.post(f"{BULK}/cleanup", json=body, headers=bulk_api.admin)
    assert response.json() == {"deleted": 2}
    bad = await bulk_api.client.post(
        f"{BULK}/cleanup", json={"days_old": -1}, headers=bulk_api.admin
    )
    assert bad.status_code == 422

    assert (await bulk_api.client.get(f"{BULK}/metrics", headers=bulk_api.bob)).status_code == 403
    metrics = (await bulk_api.client.get(f"{BULK}/metrics", headers=bulk_api.admin)).json()
    assert 0 <= metrics["memory_usage"] <= 100 and metrics["total_jobs"] == 0
    assert {host["name"] for host in metrics["hosts"]} >= {"local", "mock-a"}
