"""Export writer errors are the caller's to fix (422 naming `data`) or the disk's (507),
never a 500 -- and a full disk leaves the job and its folder as they were."""

from __future__ import annotations

import errno
import os
import pathlib
from typing import IO, Any

import pytest

from src.services.domain import BulkJobStatus
from src.services.errors import InvalidInput
from src.services.job_types.registry import JobTypeRegistry
from tests.integration.conftest import Api

BAD_ZIP_NAMES = ["../x", "/etc/x", "a/../../x", "a\\b", "", "a//b"]


async def new_job(api: Api) -> str:
    """Alice's job of a type no worker runs, so nothing but the test changes it."""
    return await api.manager.create_bulk_job("by-hand", "alice", {}, ["export_generation"])


async def test_unsafe_zip_member_names_are_422(api: Api) -> None:
    job_id = await new_job(api)
    for name in BAD_ZIP_NAMES:
        body = {"export_format": "zip", "data": {name: "a"}}
        response = await api.client.post(
            f"/bulk-jobs/{job_id}/exports", json=body, headers=api.alice
        )
        assert response.status_code == 422, (name, response.text)
        assert response.json()["field"] == "data"
    assert await exports_of(api, job_id) == []
    assert files_of(api, job_id) == []


async def test_text_that_is_not_unicode_is_invalid_input(api: Api) -> None:
    job_id = await new_job(api)
    cases: list[tuple[Any, Any]] = [
        ("csv", [{"\ud800": 1}]),
        ("csv", [{"a": "x\udfff"}]),
        ("zip", {"\ud800.txt": "a"}),
        ("zip", {"ok.txt": "\ud800"}),
    ]
    for fmt, data in cases:
        with pytest.raises(InvalidInput) as caught:
            await api.manager.create_export(job_id, fmt, data)
        assert caught.value.field == "data"
    assert files_of(api, job_id) == []


class FullDisk:
    """A file on a disk that fills up after `room` bytes: write raises ENOSPC, as write(2)
    does on a full file system."""

    def __init__(self, real: IO[bytes], room: int) -> None:
        self.real, self.room = real, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.real.close()


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = pathlib.Path.open

    def open_on_full_disk(path: pathlib.Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(path, mode, *args, **kwargs)
        return FullDisk(handle, room=1000) if path.name.endswith(".partial") else handle

    monkeypatch.setattr(pathlib.Path, "open", open_on_full_disk)


async def test_a_full_disk_is_507_and_changes_nothing(api: Api, full_disk: None) -> None:
    job_id = await new_job(api)
    before = (await api.client.get(f"/bulk-jobs/{job_id}", headers=api.alice)).json()
    body = {"export_format": "json", "data": [{"i": i, "pad": "x" * 50} for i in range(500)]}
    response = await api.client.post(f"/bulk-jobs/{job_id}/exports", json=body, headers=api.alice)
    assert response.status_code == 507, response.text
    assert "BULK_EXPORT_PATH" in response.json()["detail"]
    after = (await api.client.get(f"/bulk-jobs/{job_id}", headers=api.alice)).json()
    assert after["status"] == before["status"] and after["exports"] == []
    assert files_of(api, job_id) == []


async def test_a_full_disk_fails_the_export_stage_with_its_reason(
    api: Api, full_disk: None
) -> None:
    registry = JobTypeRegistry()
    registry.register("full", ["export_generation"])

    @registry.stage("full", "export_generation")
    async def export(ctx: Any) -> None:
        await ctx.manager.create_export(ctx.job_id, "json", [{"pad": "x" * 5000}])

    job_id = await api.manager.create_bulk_job("full", "alice", {}, ["export_generation"])
    report = await api.manager.process_job_with_stages(job_id, registry.get("full").processors)
    assert report is not None and report.status == BulkJobStatus.FAILED
    assert report.error_message is not None and "no space left" in report.error_message
    assert report.exports == [] and files_of(api, job_id) == []


async def exports_of(api: Api, job_id: str) -> list[Any]:
    response = await api.client.get(f"/bulk-jobs/{job_id}/exports", headers=api.alice)
    exports: list[Any] = response.json()
    return exports


def files_of(api: Api, job_id: str) -> list[str]:
    folder = api.manager.settings.bulk_export_path / job_id
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
