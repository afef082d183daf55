"""A SQLite file written by an earlier version opens, keeps its jobs and gains new columns."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from src.services.domain import BulkJobStatus, NewJob, RateLimit
from src.services.store.local import ADDED_COLUMNS, SCHEMA, LocalStore

LIMIT = RateLimit(max_jobs=100, window_s=3600)


def old_file(path: Path) -> None:
    """The jobs tables as they were before the columns added since (current stage, last
    error, retry_of)."""
    before = SCHEMA
    for table, column, declaration in reversed(ADDED_COLUMNS):
        if table != "jobs":  # the tokens' columns live in their own schema (local_tokens.py)
            continue
        without = before.replace(f",\n    {column} {declaration}", "")
        assert without != before, column
        before = without
    with sqlite3.connect(path) as conn:
        conn.executescript(before)
        conn.execute(
            "INSERT INTO jobs (id, job_type, user_id, status, priority, priority_rank, job_data,"
            " created_at, updated_at) VALUES ('old', 'demo', 'u1', 'pending', 'normal', 1, '{}',"
            " 1, 1)"
        )
        conn.execute(
            "INSERT INTO stages (job_id, name, idx, status) VALUES ('old', 'content_fetch', 0,"
            " 'pending')"
        )
    conn.close()


async def test_an_old_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old_file(path)
    async with LocalStore(path) as store:
        job = await store.get_job("old")
        assert job is not None and job.current_stage is None and job.retry_of is None
        await store.start_stage("old", "content_fetch", items_total=2)
        job = await store.get_job("old")
        assert job is not None
        assert (job.status, job.current_stage) == (BulkJobStatus.PROCESSING, "content_fetch")
        new = NewJob(job_type="demo", user_id="u1", job_data={}, stages=["content_fetch"])
        assert await store.create(new, LIMIT)
    async with LocalStore(path) as again:  # opening an upgraded file changes nothing
        assert (await again.get_job("old")) is not None
