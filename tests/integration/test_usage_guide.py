"""Every code block of the usage guide, run as written against the module-level manager.

Only calls that would reach TikTok or a transcription model are stubbed; everything else
is the real manager on a real SQLite file.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import APIRouter, BackgroundTasks, FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.testclient import TestClient
from pydantic import BaseModel

import src.services.bulk_job_manager as manager_module
from src.config import Settings
from src.services.bulk_job_manager import (
    BulkJobManager,
    BulkJobStage,
    BulkJobStatus,
    bulk_job_manager,
)
from src.services.errors import Conflict, InvalidInput


async def status_of(job_id: str) -> BulkJobStatus:
    job = await bulk_job_manager.get_job_status(job_id)
    assert job is not None
    return job.status


@pytest.fixture(autouse=True)
async def guide_manager(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[BulkJobManager]:
    """Point the module-level manager at this test's settings, as an env file would."""
    monkeypatch.setattr(bulk_job_manager, "_settings", settings)
    yield bulk_job_manager
    await bulk_job_manager.aclose()


async def test_1_create_a_bulk_job() -> None:
    from src.services.bulk_job_manager import BulkJobStage, bulk_job_manager

    # Define the stages for your bulk operation
    stages = [
        BulkJobStage.INITIALIZATION,
        BulkJobStage.CONTENT_FETCH,
        BulkJobStage.CONTENT_PROCESSING,
        BulkJobStage.EXPORT_PREPARATION,
        BulkJobStage.EXPORT_GENERATION,
    ]

    # Create the job
    job_id = await bulk_job_manager.create_bulk_job(
        job_type="bulk_tiktok_download",
        user_id="user123",
        job_data={
            "username": "example_user",
            "video_count": 50,
            "total_items": 50,
            "export_format": "zip",
        },
        stages=stages,
        estimated_duration_minutes=15,
        priority="normal",
    )

    job = await bulk_job_manager.get_job_status(job_id)
    assert job is not None
    assert job.status == BulkJobStatus.PENDING
    assert [stage.name for stage in job.stages] == [stage.value for stage in stages]
    assert (job.items_total, job.items_completed) == (50, 0)  # job_data's total_items


async def test_2_process_through_stages() -> None:
    job_id = await bulk_job_manager.create_bulk_job(
        "bulk", "user123", {}, [BulkJobStage.CONTENT_FETCH]
    )
    items_to_process = list(range(50))

    assert await status_of(job_id) == BulkJobStatus.PENDING

    # Start a stage
    await bulk_job_manager.start_stage(job_id, BulkJobStage.CONTENT_FETCH, items_total=50)
    assert await status_of(job_id) == BulkJobStatus.PROCESSING

    # Update progress during processing
    for i, _item in enumerate(items_to_process):
        # Process item...
        progress = (i + 1) / len(items_to_process)
        await bulk_job_manager.update_stage_progress(
            job_id, BulkJobStage.CONTENT_FETCH, progress, items_completed=i + 1
        )
    assert await status_of(job_id) == BulkJobStatus.PROCESSING

    # Complete the stage
    await bulk_job_manager.complete_stage(
        job_id, BulkJobStage.CONTENT_FETCH, items_completed=len(items_to_process)
    )

    job = await bulk_job_manager.get_job_status(job_id)
    assert job is not None
    [stage] = job.stages
    assert (stage.status, stage.items_total, stage.items_completed) == ("completed", 50, 50)
    assert job.progress == 1.0
    # Its only stage is done, so the job is.
    assert job.status == BulkJobStatus.COMPLETED and job.completed_at is not None
    assert (job.items_total, job.items_completed, job.items_failed) == (50, 50, 0)


async def test_3_handle_errors() -> None:
    job_id = await bulk_job_manager.create_bulk_job(
        "bulk", "user123", {}, [BulkJobStage.CONTENT_FETCH]
    )
    await bulk_job_manager.start_stage(job_id, BulkJobStage.CONTENT_FETCH)
    assert await status_of(job_id) == BulkJobStatus.PROCESSING
    try:
        # Process stage...
        raise ConnectionError("network down")
    except Exception as e:
        await bulk_job_manager.fail_stage(
            job_id, BulkJobStage.CONTENT_FETCH, str(e), metadata={"error_type": "network_error"}
        )

    job = await bulk_job_manager.get_job_status(job_id)
    assert job is not None
    assert job.stages[0].status == "failed"
    assert job.stages[0].error_message == "network down"
    assert job.stages[0].metadata == {"error_type": "network_error"}
    # A failed stage fails the job: its error and the stage are recorded.
    assert job.status == BulkJobStatus.FAILED
    assert (job.error_message, job.failed_stage) == ("network down", "content_fetch")
    assert job.completed_at is not None
    # A late stage call does not revive it.
    with pytest.raises(Conflict):
        await bulk_job_manager.start_stage(job_id, BulkJobStage.CONTENT_FETCH)
    assert await status_of(job_id) == BulkJobStatus.FAILED


class ValidationError(Exception):
    pass


class NetworkError(Exception):
    pass


@pytest.mark.parametrize(
    ("raised", "status", "message", "metadata"),
    [
        (None, "completed", None, {}),
        (ValidationError("no url"), "failed", "Validation failed: no url", {}),
        (
            NetworkError("timed out"),
            "failed",
            "timed out",
            {"retry_after": 300, "error_type": "network"},
        ),
        (KeyError("id"), "failed", "Unexpected error: 'id'", {}),
    ],
)
async def test_error_handling(
    raised: Exception | None, status: str, message: str | None, metadata: dict[str, Any]
) -> None:
    stage = BulkJobStage.CONTENT_FETCH
    job_id = await bulk_job_manager.create_bulk_job("bulk", "user123", {}, [stage])
    await bulk_job_manager.start_stage(job_id, stage)

    async def process_stage_data() -> None:
        if raised is not None:
            raise raised

    try:
        # Stage processing
        await process_stage_data()
        await bulk_job_manager.complete_stage(job_id, stage)
    except ValidationError as e:
        # Handle validation errors
        await bulk_job_manager.fail_stage(job_id, stage, f"Validation failed: {e!s}")
    except NetworkError as e:
        # Handle network errors with retry info
        await bulk_job_manager.fail_stage(
            job_id, stage, str(e), metadata={"retry_after": 300, "error_type": "network"}
        )
    except Exception as e:
        # Handle unexpected errors
        await bulk_job_manager.fail_stage(job_id, stage, f"Unexpected error: {e!s}")

    job = await bulk_job_manager.get_job_status(job_id)
    assert job is not None
    assert (job.status, job.error_message, job.stages[0].metadata) == (status, message, metadata)
    assert job.failed_stage == (None if raised is None else "content_fetch")


async def test_3_handle_errors_at_the_stage_level() -> None:
    """Best practice 1: a failure the job can live with is not fatal."""
    stages = [BulkJobStage.CONTENT_FETCH, BulkJobStage.CONTENT_PROCESSING]
    job_id = await bulk_job_manager.create_bulk_job("bulk", "user123", {}, stages)
    await bulk_job_manager.start_stage(job_id, BulkJobStage.CONTENT_FETCH)
    await bulk_job_manager.fail_stage(
        job_id,
        BulkJobStage.CONTENT_FETCH,
        "mirror down",
        metadata={"retry_after": 300},
        fatal=False,
    )
    assert await status_of(job_id) == BulkJobStatus.PROCESSING
    await bulk_job_manager.start_stage(job_id, BulkJobStage.CONTENT_PROCESSING)
    await bulk_job_manager.complete_stage(job_id, BulkJobStage.CONTENT_PROCESSING)
    job = await bulk_job_manager.get_job_status(job_id)
    assert job is not None
    assert (job.status, job.error_message, job.failed_stage) == ("completed", None, None)
    assert job.stages[0].error_message == "mirror down"


async def test_a_job_driven_by_hand_through_every_stage_ends_completed() -> None:
    stages = [
        BulkJobStage.INITIALIZATION,
        BulkJobStage.CONTENT_FETCH,
        BulkJobStage.CONTENT_PROCESSING,
        BulkJobStage.EXPORT_PREPARATION,
        BulkJobStage.EXPORT_GENERATION,
    ]
    job_id = await bulk_job_manager.create_bulk_job(
        "bulk_tiktok_download", "user123", {"total_items": 50}, stages
    )
    seen = []
    for stage in stages:
        await bulk_job_manager.start_stage(job_id, stage, items_total=50)
        job = await bulk_job_manager.get_job_status(job_id)
        assert job is not None and job.current_stage == stage.value
        seen.append(job.status)
        await bulk_job_manager.update_stage_progress(job_id, stage, 0.5, items_completed=25)
        await bulk_job_manager.complete_stage(job_id, stage, items_completed=50)
    assert seen == ["initializing", "processing", "processing", "exporting", "exporting"]
    job = await bulk_job_manager.get_job_status(job_id)
    assert job is not None
    assert job.status == BulkJobStatus.COMPLETED and job.completed_at is not None
    assert (job.progress, job.current_stage) == (1.0, None)
    assert (job.items_total, job.items_completed, job.items_failed) == (50, 50, 0)


async def test_4_create_exports() -> None:
    job_id = await bulk_job_manager.create_bulk_job(
        "bulk", "user123", {}, [BulkJobStage.EXPORT_GENERATION]
    )
    processed_data = [{"id": 1, "title": "first"}, {"id": 2, "title": "second"}]
    metadata = {"count": 2}
    content_data = processed_data
    transcripts = "one\ntwo\n"

    # Export as JSON
    export_id = await bulk_job_manager.create_export(
        job_id, export_format="json", data=processed_data, filename_prefix="tiktok_content"
    )
    path = await bulk_job_manager.get_export_file_path(export_id)
    assert path is not None
    assert json.loads(path.read_text()) == processed_data

    # Export as ZIP with multiple files
    export_data = {
        "metadata.json": metadata,
        "content.json": content_data,
        "transcripts.txt": transcripts,
    }
    export_id = await bulk_job_manager.create_export(
        job_id, export_format="zip", data=export_data, filename_prefix="bulk_export"
    )
    path = await bulk_job_manager.get_export_file_path(export_id)
    assert path is not None
    with zipfile.ZipFile(path) as archive:
        assert json.loads(archive.read("metadata.json")) == metadata
        assert archive.read("transcripts.txt").decode() == transcripts
    info = await bulk_job_manager.get_export_info(export_id)
    assert info is not None and info.filename.startswith("bulk_export_")
    assert await status_of(job_id) == BulkJobStatus.PENDING  # exports do not move the job


@pytest.mark.parametrize("hours", [0, -2, float("nan"), float("inf"), 24 * 365 + 1])
async def test_export_expiry_must_be_a_positive_number_of_hours(hours: float) -> None:
    job_id = await bulk_job_manager.create_bulk_job("bulk", "user123", {}, ["export_generation"])
    with pytest.raises(InvalidInput) as refused:
        await bulk_job_manager.create_export(job_id, "json", [1], expires_in_hours=hours)
    assert refused.value.field == "expires_in_hours"
    job = await bulk_job_manager.get_job_status(job_id)
    assert job is not None and job.exports == []  # nothing was written
    assert not (bulk_job_manager.settings.bulk_export_path / job_id).exists()


async def test_export_expiry_in_hours() -> None:
    job_id = await bulk_job_manager.create_bulk_job("bulk", "user123", {}, ["export_generation"])
    export_id = await bulk_job_manager.create_export(job_id, "json", [1], expires_in_hours=2)
    info = await bulk_job_manager.get_export_info(export_id)
    assert info is not None
    assert (info.expires_at - info.created_at).total_seconds() == pytest.approx(7200)


class FakeTikTokService:
    async def get_video(self, username: str, index: int) -> dict[str, Any]:
        return {"username": username, "index": index, "url": f"https://v/{index}"}


def get_tiktok_service() -> FakeTikTokService:
    return FakeTikTokService()


async def initialize_tiktok_download(job_id: str, job_data: dict[str, Any]) -> None:
    await bulk_job_manager.update_stage_progress(
        job_id, BulkJobStage.INITIALIZATION, 1.0, items_completed=1
    )


async def process_video_content(job_id: str, job_data: dict[str, Any]) -> None:
    job = await bulk_job_manager.get_job_status(job_id)
    assert job is not None
    assert len(job.results["fetchedVideos"]) == job_data["video_count"]


async def prepare_export_data(job_id: str, job_data: dict[str, Any]) -> None:
    return None


async def generate_export_files(job_id: str, job_data: dict[str, Any]) -> None:
    job = await bulk_job_manager.get_job_status(job_id)
    assert job is not None
    await bulk_job_manager.create_export(
        job_id, export_format="zip", data={"videos.json": job.results["fetchedVideos"]}
    )


async def process_tiktok_bulk_download(job_id: str, job_data: dict[str, Any]) -> None:
    """Example: Bulk TikTok video download with stages"""

    # Define stage processors
    stage_processors = {
        BulkJobStage.INITIALIZATION: initialize_tiktok_download,
        BulkJobStage.CONTENT_FETCH: fetch_tiktok_videos,
        BulkJobStage.CONTENT_PROCESSING: process_video_content,
        BulkJobStage.EXPORT_PREPARATION: prepare_export_data,
        BulkJobStage.EXPORT_GENERATION: generate_export_files,
    }

    # Process through all stages
    await bulk_job_manager.process_job_with_stages(job_id, stage_processors)


async def fetch_tiktok_videos(job_id: str, job_data: dict[str, Any]) -> None:
    """Fetch TikTok videos stage"""
    username = job_data["username"]
    video_count = job_data["video_count"]

    # Get TikTok service
    tiktok_service = get_tiktok_service()

    # Fetch videos with progress tracking
    videos = []
    for i in range(video_count):
        video = await tiktok_service.get_video(username, i)
        videos.append(video)

        # Update progress
        progress = (i + 1) / video_count
        await bulk_job_manager.update_stage_progress(
            job_id, BulkJobStage.CONTENT_FETCH, progress, items_completed=i + 1
        )

    # Store results in job data
    await bulk_job_manager.update_job_status(
        job_id, BulkJobStatus.PROCESSING, {"fetchedVideos": videos}
    )


async def test_tiktok_bulk_download_example() -> None:
    job_data = {
        "username": "example_user",
        "video_count": 50,
        "total_items": 50,
        "export_format": "zip",
    }
    job_id = await bulk_job_manager.create_bulk_job(
        "bulk_tiktok_download",
        "user123",
        job_data,
        [
            BulkJobStage.INITIALIZATION,
            BulkJobStage.CONTENT_FETCH,
            BulkJobStage.CONTENT_PROCESSING,
            BulkJobStage.EXPORT_PREPARATION,
            BulkJobStage.EXPORT_GENERATION,
        ],
    )
    await process_tiktok_bulk_download(job_id, job_data)
    job = await bulk_job_manager.get_job_status(job_id)
    assert job is not None
    assert job.status == BulkJobStatus.COMPLETED, job.error_message
    assert job.stages[1].items_completed == 50
    assert len(job.exports) == 1
    # The job's items are the 50 videos, however many stages went over them.
    assert (job.items_total, job.items_completed, job.items_failed) == (50, 50, 0)


async def transcribe_audio_file(file_path: str) -> str:
    if "broken" in file_path:
        raise ValueError(f"cannot decode {file_path}")
    return f"transcript of {file_path}"


async def process_bulk_transcription(job_id: str, job_data: dict[str, Any]) -> None:
    """Example: Bulk audio transcription"""

    files = job_data["audio_files"]

    # Initialize transcription stage
    await bulk_job_manager.start_stage(job_id, BulkJobStage.TRANSCRIPTION, items_total=len(files))
    assert await status_of(job_id) == BulkJobStatus.PROCESSING

    transcripts = []
    for i, file_path in enumerate(files):
        try:
            # Process file
            transcript = await transcribe_audio_file(file_path)
            transcripts.append({"file": file_path, "transcript": transcript, "status": "completed"})

            # Update progress
            progress = (i + 1) / len(files)
            await bulk_job_manager.update_stage_progress(
                job_id, BulkJobStage.TRANSCRIPTION, progress, items_completed=i + 1
            )

        except Exception as e:
            transcripts.append({"file": file_path, "error": str(e), "status": "failed"})

            await bulk_job_manager.update_stage_progress(
                job_id,
                BulkJobStage.TRANSCRIPTION,
                progress,
                items_completed=i + 1,
                items_failed=1,
            )

    # Complete stage
    await bulk_job_manager.complete_stage(
        job_id,
        BulkJobStage.TRANSCRIPTION,
        items_completed=len([t for t in transcripts if t["status"] == "completed"]),
        items_failed=len([t for t in transcripts if t["status"] == "failed"]),
    )
    assert await status_of(job_id) == BulkJobStatus.COMPLETED

    # Create export
    await bulk_job_manager.create_export(
        job_id, export_format="json", data=transcripts, filename_prefix="bulk_transcripts"
    )


async def test_audio_transcription_example() -> None:
    files = ["a.mp3", "b.mp3", "broken.mp3", "d.mp3"]
    job_id = await bulk_job_manager.create_bulk_job(
        "bulk_transcription", "user123", {"audio_files": files}, [BulkJobStage.TRANSCRIPTION]
    )
    await process_bulk_transcription(job_id, {"audio_files": files})
    job = await bulk_job_manager.get_job_status(job_id)
    assert job is not None
    stage = job.stages[0]
    assert (stage.status, stage.items_completed, stage.items_failed) == ("completed", 3, 1)
    assert (job.status, job.items_total, job.items_completed, job.items_failed) == (
        "completed",
        4,
        3,
        1,
    )
    [export] = job.exports
    path = await bulk_job_manager.get_export_file_path(export.export_id)
    assert path is not None
    assert [row["status"] for row in json.loads(path.read_text())] == [
        "completed",
        "completed",
        "failed",
        "completed",
    ]


router = APIRouter()


class BulkProcessRequest(BaseModel):
    job_type: str
    user_id: str
    job_data: dict[str, Any]
    stages: list[BulkJobStage]


async def process_bulk_job(job_id: str) -> None:
    job = await bulk_job_manager.get_job_status(job_id)
    assert job is not None
    await process_tiktok_bulk_download(job_id, job.job_data)


@router.post("/bulk-process")
async def start_bulk_process(request: BulkProcessRequest, background_tasks: BackgroundTasks):  # type: ignore[no-untyped-def]  # the usage guide's code, as written
    """Start a bulk processing job"""

    # Create job
    job_id = await bulk_job_manager.create_bulk_job(
        job_type=request.job_type,
        user_id=request.user_id,
        job_data=request.job_data,
        stages=request.stages,
    )

    # Process in background
    background_tasks.add_task(process_bulk_job, job_id)

    return {"job_id": job_id, "status": "started"}


@router.get("/bulk-jobs/{job_id}/status")
async def get_job_status(job_id: str):  # type: ignore[no-untyped-def]  # the usage guide's code, as written
    """Get job status and progress"""
    job = await bulk_job_manager.get_job_status(job_id)
    if not job:
        raise HTTPException(status_code=404, detail="Job not found")
    return job


@router.get("/bulk-jobs/{job_id}/export/{export_id}")
async def download_export(job_id: str, export_id: str):  # type: ignore[no-untyped-def]  # the usage guide's code, as written
    """Download export file"""
    file_path = await bulk_job_manager.get_export_file_path(export_id)
    if not file_path:
        raise HTTPException(status_code=404, detail="Export not found or expired")

    return FileResponse(file_path)


def test_fastapi_background_task_example(settings: Settings) -> None:
    # A fresh manager in the TestClient's own event loop, as a server process would have.
    manager_module.bulk_job_manager._settings = settings
    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client:
        body = {
            "job_type": "bulk_tiktok_download",
            "user_id": "user123",
            "job_data": {"username": "u", "video_count": 5},
            "stages": [
                "initialization",
                "content_fetch",
                "content_processing",
                "export_preparation",
                "export_generation",
            ],
        }
        started = client.post("/bulk-process", json=body).json()
        assert started["status"] == "started"
        job = client.get(f"/bulk-jobs/{started['job_id']}/status").json()
        assert job["status"] == "completed"
        export_id = job["exports"][0]["export_id"]
        download = client.get(f"/bulk-jobs/{started['job_id']}/export/{export_id}")
        assert download.status_code == 200
        assert client.get("/bulk-jobs/missing/status").status_code == 404
        assert client.get(f"/bulk-jobs/x/export/{'nope'}").status_code == 404


async def cleanup_expired_exports() -> None:
    """Clean up expired exports (run periodically)"""
    await bulk_job_manager.cleanup_expired_exports()


async def get_job_statistics() -> Any:
    """Get job processing statistics"""
    return await bulk_job_manager.get_job_stats()


async def test_monitoring_and_cleanup() -> None:
    job_id = await bulk_job_manager.create_bulk_job(
        "bulk", "user123", {}, [BulkJobStage.EXPORT_GENERATION]
    )
    old = await bulk_job_manager.create_export(job_id, "json", [1], expires_in_hours=1e-9)
    kept = await bulk_job_manager.create_export(job_id, "json", [2])
    old_path = bulk_job_manager.settings.bulk_export_path / job_id
    assert len(list(old_path.glob("*.json"))) == 2
    await cleanup_expired_exports()
    assert await bulk_job_manager.get_export_info(old) is None
    assert await bulk_job_manager.get_export_file_path(kept) is not None
    assert len(list(old_path.glob("*.json"))) == 1
    stats = await get_job_statistics()
    assert stats.total_jobs == 1
    assert stats.exports == 1
    assert stats.by_status == {"pending": 1}
