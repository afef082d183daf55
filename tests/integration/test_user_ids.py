"""User ids are non-empty, trimmed and bounded wherever they enter, and an owner filter
never widens to "everyone" for a non-admin -- on both stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from src.cli import app
from src.config import get_settings
from src.services.auth import authenticate, create_api_token, hash_token
from src.services.containers.service import ContainerJobService
from src.services.errors import InvalidInput
from tests.integration.conftest import Api, bearer

BAD_IDS = ["", "   ", "\t", "x" * 201, "a\nb", "a\x00b", "\ud800"]


@pytest.fixture
def cli_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("BULKJOBS_DB_PATH", str(tmp_path / "cli.db"))
    monkeypatch.setenv("BULK_EXPORT_PATH", str(tmp_path / "exports"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize("user", ["", "   ", "x" * 201])
def test_token_create_refuses_a_bad_user_id(cli_environment: None, user: str) -> None:
    result = CliRunner().invoke(app, ["token", "create", "--user", user])
    assert result.exit_code == 1
    assert "user" in result.output and "bjt_" not in result.output


async def test_ids_are_checked_and_trimmed_where_they_enter(api: Api) -> None:
    store = await api.manager.store()
    for bad in BAD_IDS:
        with pytest.raises(InvalidInput):
            await create_api_token(store, bad)
        with pytest.raises(InvalidInput):
            await api.manager.create_bulk_job("sample", bad, {}, ["initialization"])
        with pytest.raises(InvalidInput):
            await ContainerJobService(api.manager).create_job("busybox", "true", user=bad)
    token = await create_api_token(store, "  carol  ")
    found = await authenticate(store, token)
    assert found is not None and found.user_id == "carol"
    body = {"job_type": "sample", "user_id": " ", "job_data": {}}
    response = await api.client.post("/bulk-process", json=body, headers=api.admin)
    assert response.status_code == 422 and response.json()["field"] == "user_id"


async def test_a_stored_token_with_an_empty_user_id_acts_as_no_one(api: Api) -> None:
    """A token created before ids were checked (written straight into the store)."""
    store = await api.manager.store()
    raw = "bjt_" + "e" * 43
    await store.create_token(hash_token(raw), "", False, "legacy")
    for path in ("/container-jobs", "/bulk-jobs"):
        response = await api.client.get(path, headers=bearer(raw))
        assert response.status_code == 401, path


async def test_a_non_admin_sees_only_their_own_container_jobs(api: Api) -> None:
    host = {"name": "mock", "executor_type": "mock"}
    assert (await api.client.post("/hosts", json=host, headers=api.admin)).status_code == 201
    job = {"image": "busybox", "command": "true", "executor_type": "mock"}
    mine = await api.client.post("/container-jobs", json=job, headers=api.alice)
    assert mine.status_code == 201, mine.text
    await api.client.post("/container-jobs", json=job, headers=api.bob)
    for created_by in (None, "", "bob"):
        params = {} if created_by is None else {"created_by": created_by}
        listed = await api.client.get("/container-jobs", params=params, headers=api.alice)
        assert [job["created_by"] for job in listed.json()] == ["alice"], created_by
    everyone = await api.client.get("/container-jobs", headers=api.admin)
    assert {job["created_by"] for job in everyone.json()} == {"alice", "bob"}
    bobs = await api.client.get("/container-jobs?created_by=bob", headers=api.admin)
    assert {job["created_by"] for job in bobs.json()} == {"bob"}
