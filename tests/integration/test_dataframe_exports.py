"""A stage exports a pandas DataFrame through the manager, on every store, in every format."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import cast

import pandas as pd
import pytest

from src.config import Settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.domain import BulkJobStage, BulkJobStatus, ExportFormat
from src.services.runner import StageContext
from src.services.store.base import Store

FRAME = pd.DataFrame(
    {
        "video": ["v1", "v2", "v3"],
        "views": [10, 20, 30],
        "rating": [4.5, float("nan"), 3.0],
        "posted": pd.to_datetime([datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), None, None]),
    }
)
ROWS = [
    {"video": "v1", "views": 10, "rating": 4.5, "posted": "2026-01-02T03:04:05+00:00"},
    {"video": "v2", "views": 20, "rating": None, "posted": None},
    {"video": "v3", "views": 30, "rating": 3.0, "posted": None},
]


@pytest.fixture
async def manager(settings: Settings, store: Store) -> AsyncIterator[BulkJobManager]:
    manager = BulkJobManager(settings, store)
    yield manager
    await manager.aclose()


def read_back(fmt: str, content: bytes) -> list[dict[str, object]]:
    if fmt == "json":
        rows: list[dict[str, object]] = json.loads(content)
        return rows
    if fmt == "zip":  # its JSON member; the test reads the CSV member too
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            return read_back("json", archive.read("videos.json"))
    cells = list(csv.DictReader(io.StringIO(content.decode())))
    return [
        {
            "video": row["video"],
            "views": int(row["views"]),
            "rating": float(row["rating"]) if row["rating"] else None,
            "posted": row["posted"] or None,
        }
        for row in cells
    ]


@pytest.mark.parametrize("fmt", ["json", "csv", "zip"])
async def test_a_stage_exports_a_dataframe(manager: BulkJobManager, fmt: str) -> None:
    async def export(ctx: StageContext) -> None:
        data = {"videos.csv": FRAME, "videos.json": FRAME} if fmt == "zip" else FRAME
        await ctx.manager.create_export(ctx.job_id, cast(ExportFormat, fmt), data, "videos")

    stage = BulkJobStage.EXPORT_GENERATION
    job_id = await manager.create_bulk_job("frames", "u1", {}, [stage])
    report = await manager.process_job_with_stages(job_id, {stage: export})
    assert report is not None and report.status == BulkJobStatus.COMPLETED, report
    [info] = report.exports
    path = await manager.get_export_file_path(info.export_id)
    assert path is not None
    content = path.read_bytes()
    assert read_back(fmt, content) == ROWS
    if fmt == "zip":
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            assert read_back("csv", archive.read("videos.csv")) == ROWS
