"""Shortened ids over HTTP on both stores: every route that takes a bulk job or container
job id accepts a unique start of it; an ambiguous one is a 422 naming the number of matches;
another user's job stays a 404. Also: HEAD on a download, and admins are not rate limited."""

from __future__ import annotations

from src.services.domain import NewJob
from tests.integration.conftest import Api
from tests.integration.test_events import stream

SAMPLE = {"job_type": "sample", "job_data": {"items": 3, "delay_ms": 0}}


async def by_hand(api: Api, job_id: str, user: str = "alice") -> str:
    """A job with a chosen id, as another process might have created it."""
    new = NewJob(job_type="by_hand", user_id=user, job_data={}, stages=["cleanup"], job_id=job_id)
    return await (await api.manager.store()).create(new, None)


async def test_every_bulk_job_route_takes_a_unique_prefix(api: Api) -> None:
    job_id = (await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)).json()["job_id"]
    job = await api.wait_for(job_id)
    short = job_id[:8]
    for path in (f"/bulk-jobs/{short}", f"/bulk-jobs/{short}/status"):
        response = await api.client.get(path, headers=api.alice)
        assert response.status_code == 200 and response.json()["job_id"] == job_id
    [export] = (await api.client.get(f"/bulk-jobs/{short}/exports", headers=api.alice)).json()
    download = f"/bulk-jobs/{short}/export/{export['export_id']}"
    got = await api.client.get(download, headers=api.alice)
    assert got.status_code == 200
    assert len(got.content) == job["exports"][0]["size_bytes"]
    head = await api.client.head(download, headers=api.alice)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(got.content))
    assert head.headers["content-disposition"] == got.headers["content-disposition"]
    created = await api.client.post(
        f"/bulk-jobs/{short}/exports",
        json={"export_format": "json", "data": [1]},
        headers=api.alice,
    )
    assert created.status_code == 201, created.text


async def test_cancel_and_events_take_a_prefix(api: Api) -> None:
    await by_hand(api, "cafe0001-job")
    cancelled = await api.client.post("/bulk-jobs/cafe0001/cancel", headers=api.alice)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json() == {"job_id": "cafe0001-job", "status": "cancelled"}
    async with stream(api.app, "/bulk-jobs/cafe0001/events", api.alice) as events:
        assert events.status == 200
        snapshot = await events.next_event()
        assert [job["job_id"] for job in snapshot.data["jobs"]] == ["cafe0001-job"]


async def test_ambiguous_missing_and_foreign_prefixes(api: Api) -> None:
    for job_id in ("beef-1", "beef-2", "beef-3"):
        await by_hand(api, job_id)
    await by_hand(api, "beefcake", user="bob")
    ambiguous = await api.client.get("/bulk-jobs/beef", headers=api.alice)
    assert ambiguous.status_code == 422
    assert ambiguous.json()["field"] == "job_id"
    assert "is the start of 3 job ids" in ambiguous.json()["detail"]
    # Bob's job is not counted for Alice, and is a 404 to her even by its full id.
    assert (await api.client.get("/bulk-jobs/beefc", headers=api.alice)).status_code == 404
    assert (await api.client.get("/bulk-jobs/beefcake", headers=api.alice)).status_code == 404
    assert (await api.client.get("/bulk-jobs/beefc", headers=api.bob)).status_code == 200
    # An admin sees everyone's: four jobs start with "beef".
    everyone = await api.client.get("/bulk-jobs/beef", headers=api.admin)
    assert "is the start of 4 job ids" in everyone.json()["detail"]
    assert (await api.client.get("/bulk-jobs/nothing", headers=api.alice)).status_code == 404


async def test_container_job_routes_take_a_prefix(api: Api) -> None:
    created = await api.client.post(
        "/container-jobs",
        json={"image": "local", "command": "sleep 30"},
        headers=api.admin,
    )
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    short = job_id[:8]
    got = await api.client.get(f"/container-jobs/{short}", headers=api.admin)
    assert got.status_code == 200 and got.json()["id"] == job_id
    logs = await api.client.get(f"/container-jobs/{short}/logs", headers=api.admin)
    assert logs.status_code == 200
    cancel = await api.client.post(f"/container-jobs/{short}/cancel", headers=api.admin)
    assert cancel.status_code == 200 and cancel.json()["job_id"] == job_id
    assert (await api.client.get(f"/container-jobs/{short}", headers=api.alice)).status_code == 404
    again = await api.client.post(
        "/container-jobs", json={"image": "local", "command": "sleep 30"}, headers=api.admin
    )
    bulk = await api.client.post(
        "/container-jobs/bulk/status",
        json={"job_ids": [again.json()["id"][:10], "no-such-job"], "status": "cancelled"},
        headers=api.admin,
    )
    assert bulk.status_code == 200, bulk.text
    assert bulk.json()["errors"] == {"no-such-job": "not found"}
    assert bulk.json()["count"] == 1


async def test_admins_are_not_rate_limited(api: Api) -> None:
    limit = api.manager.settings.bulk_rate_limit_max_jobs
    for _ in range(limit):
        assert (await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)).is_success
    refused = await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)
    assert refused.status_code == 429
    for _ in range(limit + 2):
        admitted = await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.admin)
        assert admitted.status_code == 202, admitted.text
