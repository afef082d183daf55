"""Export files through crashes, cleanup and downloads: a runner SIGKILLed while exporting
leaves one export once the job resumes; leftovers are swept at start-up and by cleanup; a
download either completes or is a 404, whatever cleanup does meanwhile."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from src.app import create_app
from src.config import Settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.domain import TERMINAL_JOB_STATUSES, BulkJobStatus
from tests.integration import crash_export
from tests.integration.conftest import Api

ROOT = Path(__file__).resolve().parents[2]
AN_HOUR_AGO = time.time() - 3600


@pytest.fixture
async def manager(settings: Settings) -> AsyncIterator[BulkJobManager]:
    manager = BulkJobManager(settings.model_copy(update={"bulkjobs_lease_seconds": 0.5}))
    yield manager
    await manager.aclose()


async def crash(manager: BulkJobManager, point: str) -> str:
    """A job whose runner (another process) was SIGKILLed at `point` of its export."""
    job_id = await manager.create_bulk_job("crashy", "u1", {}, ["export_generation"])
    settings = manager.settings
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.crash_export",
        str(settings.bulkjobs_db_path),
        str(settings.bulk_export_path),
        job_id,
        point,
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == -signal.SIGKILL, stderr.decode()
    return job_id


def files_of(manager: BulkJobManager, job_id: str) -> list[str]:
    folder = manager.settings.bulk_export_path / job_id
    return sorted(path.name for path in folder.iterdir() if path.is_file())


async def resume(manager: BulkJobManager, job_id: str) -> None:
    """Run the job again once the dead runner's lease expired (bounded wait)."""
    for _ in range(100):
        report = await manager.process_job_with_stages(
            job_id, crash_export.processors("none"), kinds=()
        )
        if report is not None and report.status in TERMINAL_JOB_STATUSES:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the dead runner's lease never expired")


@pytest.mark.parametrize(
    ("point", "left"),
    [("writing", "partial"), ("renamed", "unregistered"), ("registered", "registered")],
)
async def test_a_stage_resumed_after_a_crash_has_one_export(
    manager: BulkJobManager, point: str, left: str
) -> None:
    job_id = await crash(manager, point)
    job = await manager.get_job(job_id)
    assert job is not None
    [name] = files_of(manager, job_id)
    assert name.endswith(".partial") == (left == "partial")
    assert len(job.exports) == (1 if left == "registered" else 0)
    await resume(manager, job_id)
    job = await manager.get_job(job_id)
    assert job is not None and job.status == BulkJobStatus.COMPLETED
    [export] = job.exports
    assert files_of(manager, job_id) == [Path(export.relative_path).name]
    rows = json.loads((manager.settings.bulk_export_path / export.relative_path).read_bytes())
    assert len(rows) == crash_export.ROWS


async def test_leftovers_are_swept_at_start_up_and_by_cleanup(manager: BulkJobManager) -> None:
    partial_job = await crash(manager, "writing")
    orphan_job = await crash(manager, "renamed")
    for job_id in (partial_job, orphan_job):
        await manager.cancel_job(job_id)  # never resumed: only the sweep can remove them
    fresh = manager.settings.bulk_export_path / orphan_job / ".fresh_export_id_1234.json.partial"
    fresh.write_bytes(b"[")  # a writer in another process is still at it: not touched
    for path in manager.settings.bulk_export_path.glob("*/*"):
        if path != fresh:
            os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO))
    app = create_app(manager.settings, manager=manager)
    async with app.router.lifespan_context(app):  # start-up runs the first cleanup round
        for _ in range(200):
            if not (manager.settings.bulk_export_path / partial_job).exists():
                break
            await asyncio.sleep(0.05)
    assert not (manager.settings.bulk_export_path / partial_job).exists()
    assert files_of(manager, orphan_job) == [fresh.name]
    os.utime(fresh, (AN_HOUR_AGO, AN_HOUR_AGO))
    swept = await manager.sweep_files()
    assert swept.files == 1
    assert not (manager.settings.bulk_export_path / orphan_job).exists()


async def test_working_files_go_when_the_job_is_gone_or_its_exports_expire(
    manager: BulkJobManager,
) -> None:
    root = manager.settings.bulk_export_path
    job_id = await manager.create_bulk_job("work", "u1", {}, ["export_generation"])
    for folder, name in (("stages", "content_fetch.json"), ("bodies", "0")):
        (root / job_id / folder).mkdir(parents=True)
        (root / job_id / folder / name).write_bytes(b"x" * 100)
    export_id = await manager.create_export(job_id, "json", [1])
    gone = root / "a-job-that-is-gone"
    (gone / "bodies").mkdir(parents=True)
    (gone / "bodies" / "7").write_bytes(b"y" * 50)
    (gone / "notes.txt").write_text("not ours: kept")
    await manager.update_job_status(job_id, BulkJobStatus.COMPLETED)
    for path in root.glob("**/*"):
        os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO))
    first = await manager.sweep_files()
    assert (first.files, first.bytes) == (1, 50)  # the finished job's export is still live
    assert sorted(p.name for p in gone.iterdir()) == ["notes.txt"]
    assert (root / job_id / "bodies" / "0").exists()
    await manager.cleanup_export(export_id)
    second = await manager.sweep_files()
    assert (second.files, second.bytes) == (2, 200)
    assert not (root / job_id).exists()


async def download_while_cleanup_runs(api: Api, job_id: str, export_id: str) -> tuple[int, bytes]:
    """GET the export through the app, removing it (file and record) right after the
    response started -- the moment the race in the issue hit."""
    status = 0
    body = bytearray()
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/bulk-jobs/{job_id}/export/{export_id}",
        "raw_path": f"/bulk-jobs/{job_id}/export/{export_id}".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"authorization", api.alice["Authorization"].encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            assert await api.manager.cleanup_export(export_id)
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await api.app(scope, receive, send)
    return status, bytes(body)


async def test_a_download_completes_though_cleanup_removes_the_file(api: Api) -> None:
    created = await api.client.post(
        "/bulk-jobs", json={"job_type": "sample", "job_data": {"items": 1}}, headers=api.alice
    )
    job_id = created.json()["job_id"]
    rows = [{"i": i, "pad": "x" * 100} for i in range(3000)]  # several chunks of 64 KiB
    export_id = await api.manager.create_export(job_id, "json", rows)
    path = api.manager.settings.bulk_export_path / job_id / f"{export_id}.json"
    expected = path.read_bytes()
    status, body = await download_while_cleanup_runs(api, job_id, export_id)
    assert (status, body) == (200, expected)
    assert not path.exists()
    again = await api.client.get(f"/bulk-jobs/{job_id}/export/{export_id}", headers=api.alice)
    assert again.status_code == 404


async def test_an_export_whose_file_went_is_a_404(api: Api) -> None:
    created = await api.client.post(
        "/bulk-jobs", json={"job_type": "sample", "job_data": {"items": 1}}, headers=api.alice
    )
    job_id = created.json()["job_id"]
    export_id = await api.manager.create_export(job_id, "json", [1])
    (api.manager.settings.bulk_export_path / job_id / f"{export_id}.json").unlink()
    response = await api.client.get(f"/bulk-jobs/{job_id}/export/{export_id}", headers=api.alice)
    assert response.status_code == 404
    assert str(api.manager.settings.bulk_export_path) not in response.text
