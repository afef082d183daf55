"""Deleting finished jobs (by hand and by retention) and revoking or expiring API tokens,
through the HTTP API on every store."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from src.services.auth import create_api_token, hash_token, token_id
from src.services.domain import utcnow
from src.services.domain.containers import ContainerJob
from src.services.worker.sources import RetentionSource
from tests.integration.conftest import Api, bearer

SAMPLE = {"job_type": "sample", "job_data": {"items": 5, "delay_ms": 1}}


async def finished_job(api: Api) -> str:
    response = await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)
    job_id: str = response.json()["job_id"]
    job = await api.wait_for(job_id)
    assert job["status"] == "completed" and job["exports"]
    return job_id


def job_folder(api: Api, job_id: str) -> Path:
    return api.manager.settings.bulk_export_path / job_id


async def test_an_owner_deletes_a_finished_job_with_its_files(api: Api) -> None:
    job_id = await finished_job(api)
    folder = job_folder(api, job_id)
    assert any(folder.glob("*.json")) and any((folder / "stages").iterdir())
    store = await api.manager.store()
    child = ContainerJob(
        id="c-" + job_id, docker_image="busybox", bulk_job_id=job_id, status="completed"
    )
    await store.container_create(child)

    response = await api.client.delete(f"/bulk-jobs/{job_id[:10]}", headers=api.alice)

    assert response.status_code == 204 and response.content == b""
    assert (await api.client.get(f"/bulk-jobs/{job_id}", headers=api.alice)).status_code == 404
    assert not folder.exists()
    assert await store.container_get(child.id) is None
    again = await api.client.delete(f"/bulk-jobs/{job_id}", headers=api.alice)
    assert again.status_code == 404


async def test_another_users_job_reads_as_missing_and_an_admin_may_delete_it(api: Api) -> None:
    job_id = await finished_job(api)
    response = await api.client.delete(f"/bulk-jobs/{job_id}", headers=api.bob)
    assert response.status_code == 404
    assert (await api.client.get(f"/bulk-jobs/{job_id}", headers=api.alice)).status_code == 200
    response = await api.client.delete(f"/bulk-jobs/{job_id}", headers=api.admin)
    assert response.status_code == 204


async def test_a_job_that_has_not_finished_is_409_saying_cancel_first(api: Api) -> None:
    slow = {"job_type": "sample", "job_data": {"items": 100_000, "delay_ms": 5}}
    job_id = (await api.client.post("/bulk-jobs", json=slow, headers=api.alice)).json()["job_id"]
    response = await api.client.delete(f"/bulk-jobs/{job_id}", headers=api.alice)
    assert response.status_code == 409
    assert "cancel it first" in response.json()["detail"]
    await api.client.post(f"/bulk-jobs/{job_id}/cancel", headers=api.alice)
    await api.wait_for(job_id)
    response = await api.client.delete(f"/bulk-jobs/{job_id}", headers=api.alice)
    assert response.status_code == 204


async def test_retention_deletes_only_jobs_finished_before_the_cutoff(api: Api) -> None:
    old = await finished_job(api)
    recent = await finished_job(api)
    store = await api.manager.store()
    jobs = [await store.get_job(job_id) for job_id in (old, recent)]
    ended = [job.completed_at for job in jobs if job is not None and job.completed_at]
    assert len(ended) == 2 and ended[0] < ended[1]
    assert await api.manager.delete_expired_jobs() == 0  # the default: 30 days
    assert await api.manager.delete_expired_jobs(days=0) == 0  # 0: kept forever
    # A retention that puts the cutoff between the two jobs' ends.
    between = ended[0] + (ended[1] - ended[0]) / 2
    days = (utcnow() - between) / timedelta(days=1)
    source = RetentionSource(lambda: api.manager.delete_expired_jobs(days=days), 3600)
    [claim] = await source.claim("w", 1, 30)
    await claim.run()
    assert await store.get_job(old) is None and not job_folder(api, old).exists()
    assert await store.get_job(recent) is not None and job_folder(api, recent).exists()
    assert await source.claim("w", 1, 30) == []  # not due again for an hour


async def test_admins_list_and_revoke_tokens_and_a_revoked_token_is_401(api: Api) -> None:
    store = await api.manager.store()
    raw = await create_api_token(store, "carol", name="carol's laptop")
    carol = bearer(raw)
    assert (await api.client.get("/bulk-jobs", headers=carol)).status_code == 200

    listed = await api.client.get("/admin/tokens", params={"user_id": "carol"}, headers=api.admin)
    assert listed.status_code == 200
    [token] = listed.json()
    assert token["token_id"] == token_id(raw) and token["name"] == "carol's laptop"
    assert token["revoked_at"] is None and token["expires_at"] is None
    assert raw not in listed.text
    assert (await api.client.get("/admin/tokens", headers=api.alice)).status_code == 403

    revoked = await api.client.delete(f"/admin/tokens/{token_id(raw)}", headers=api.admin)
    assert revoked.status_code == 204
    refused = await api.client.get("/bulk-jobs", headers=carol)
    assert refused.status_code == 401
    assert "revoked" in refused.json()["detail"]
    assert refused.headers["www-authenticate"] == "Bearer"
    [token] = (await api.client.get("/admin/tokens?user_id=carol", headers=api.admin)).json()
    assert token["revoked_at"] is not None
    missing = await api.client.delete("/admin/tokens/000000000000", headers=api.admin)
    assert missing.status_code == 404


async def test_an_expired_token_is_401_saying_so(api: Api) -> None:
    store = await api.manager.store()
    raw = "bjt_" + "x" * 43
    past = utcnow() - timedelta(minutes=1)
    await store.create_token(hash_token(raw), "dave", False, "old", expires_at=past)
    refused = await api.client.get("/bulk-jobs", headers=bearer(raw))
    assert refused.status_code == 401 and "expired" in refused.json()["detail"]
    fresh = await create_api_token(store, "dave", expires_in_days=1)
    assert (await api.client.get("/bulk-jobs", headers=bearer(fresh))).status_code == 200
    [newest, _] = await store.list_tokens("dave")
    assert newest.expires_at is not None
    assert timedelta(hours=23) < newest.expires_at - utcnow() <= timedelta(days=1)


async def test_a_deleted_job_is_gone_from_the_list(api: Api) -> None:
    job_id = await finished_job(api)
    deleted = await api.manager.delete_job(job_id)
    assert deleted.done and deleted.exports == 1
    listed = await api.client.get("/bulk-jobs", headers=api.alice)
    assert job_id not in [job["job_id"] for job in listed.json()]
