"""LocalStore: the embedded SQLite store. Each operation is one transaction in one thread hop.

All statements of an operation run in a single call on the store's own thread, so an
operation costs one await; awaiting statement by statement (aiosqlite style) caps commits
near 1,000/s on the reference machine, one hop per transaction reaches about 20,000/s.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson

from src.services.domain import (
    ACTIVE_JOB_STATUSES,
    JOB_TRANSITIONS,
    STAGE_TRANSITIONS,
    TERMINAL_JOB_STATUSES,
    ApiToken,
    BulkJobStatus,
    Export,
    Job,
    JobStats,
    NewJob,
    RateLimit,
    Stage,
    StageStatus,
    from_epoch,
    to_datetime,
)
from src.services.errors import Conflict, NotFound, RateLimited, StoreUnavailable
from src.services.metrics import StoreTimer
from src.services.store.base import MAX_PAGE
from src.services.store.local_containers import (
    CONTAINER_SCHEMA,
    LocalContainerOps,
    ensure_default_host,
)
from src.services.store.local_work import WORK_SCHEMA, LocalWorkOps

T = TypeVar("T")
Clock = Callable[[], float]

PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    job_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    priority TEXT NOT NULL,
    priority_rank INTEGER NOT NULL,
    job_data TEXT NOT NULL,
    results TEXT NOT NULL DEFAULT '{}',
    estimated_duration_minutes REAL,
    error_message TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    lease_owner TEXT,
    lease_expires_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_user_and_created ON jobs(user_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_status_and_rank ON jobs(status, priority_rank, created_at);
CREATE TABLE IF NOT EXISTS stages (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    idx INTEGER NOT NULL,
    status TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    items_total INTEGER,
    items_completed INTEGER NOT NULL DEFAULT 0,
    items_failed INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    completed_at REAL,
    error_message TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (job_id, name)
);
CREATE TABLE IF NOT EXISTS exports (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    format TEXT NOT NULL,
    filename TEXT NOT NULL,
    relative_path TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS exports_by_expires ON exports(expires_at);
CREATE INDEX IF NOT EXISTS exports_by_job ON exports(job_id);
CREATE TABLE IF NOT EXISTS api_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    is_admin INTEGER NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _loads(text: str | None) -> Any:
    return orjson.loads(text) if text else {}


def _clamp(value: float) -> float:
    if math.isnan(value):
        return 0.0
    return min(1.0, max(0.0, value))


class LocalStore(LocalContainerOps, LocalWorkOps):
    """SQLite-backed Store, ContainerStore and WorkStore. Safe to share between tasks; one per
    file."""

    def __init__(self, path: Path | str, clock: Clock = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bulkjobs-sqlite")
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False

    # -- plumbing -------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
        return conn

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread is off only so that aclose can close every thread's connection.
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.executescript(SCHEMA + CONTAINER_SCHEMA + WORK_SCHEMA)
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def _transaction(self, fn: Callable[..., T], *args: Any) -> T:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, *args)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` as one transaction on the store thread."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        loop = asyncio.get_running_loop()
        try:
            with StoreTimer("local", _operation(fn)):
                return await loop.run_in_executor(
                    self._executor, partial(self._transaction, fn, *args)
                )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite: {exc}") from exc

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a read-only `fn(conn, *args)` as one read transaction, in this thread.

        In WAL mode a reader never waits for the writer, and an indexed read of a few rows
        costs less than the hop to the writer thread and back, so reads skip the hop.
        """
        if self._closed:
            raise StoreUnavailable("the store is closed")
        try:
            conn = self._connection()
            conn.execute("BEGIN")
            try:
                return fn(conn, *args)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite: {exc}") from exc

    async def open(self) -> None:
        """Create the file and schema now, so a bad path fails at start-up."""
        await self._run(ensure_default_host)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)  # lets a running transaction finish first
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()

    async def __aenter__(self) -> LocalStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- jobs ------------------------------------------------------------------------------

    async def create(self, job: NewJob, limit: RateLimit) -> str:
        return await self._run(self._create, job, limit)

    def _create(self, conn: sqlite3.Connection, job: NewJob, limit: RateLimit) -> str:
        now = self._clock()
        self._check_rate_limit(conn, job.user_id, limit, now)
        job_id = job.job_id or uuid.uuid4().hex
        try:
            conn.execute(
                "INSERT INTO jobs (id, job_type, user_id, status, priority, priority_rank,"
                " job_data, estimated_duration_minutes, created_at, updated_at)"
                " VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    job.job_type,
                    job.user_id,
                    job.priority,
                    PRIORITY_RANK[job.priority],
                    _dumps(job.job_data),
                    job.estimated_duration_minutes,
                    now,
                    now,
                ),
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"job {job_id} already exists") from None
        conn.executemany(
            "INSERT INTO stages (job_id, name, idx, status) VALUES (?, ?, ?, 'pending')",
            [(job_id, name, index) for index, name in enumerate(job.stages)],
        )
        return job_id

    def _check_rate_limit(
        self, conn: sqlite3.Connection, user_id: str, limit: RateLimit, now: float
    ) -> None:
        since = now - limit.window_s
        row = conn.execute(
            "SELECT COUNT(*), MIN(created_at) FROM jobs WHERE user_id = ? AND created_at > ?",
            (user_id, since),
        ).fetchone()
        count, oldest = row[0], row[1]
        if count >= limit.max_jobs:
            retry_after = math.ceil(oldest + limit.window_s - now)
            raise RateLimited(retry_after)

    async def update_status(
        self,
        job_id: str,
        status: BulkJobStatus,
        updates: dict[str, Any] | None = None,
        error_message: str | None = None,
    ) -> None:
        await self._run(self._update_status, job_id, BulkJobStatus(status), updates, error_message)

    def _update_status(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        status: BulkJobStatus,
        updates: dict[str, Any] | None,
        error_message: str | None,
    ) -> None:
        row = self._job_row(conn, job_id)
        current = BulkJobStatus(row["status"])
        if status not in JOB_TRANSITIONS[current]:
            raise Conflict(f"job {job_id} cannot go from {current} to {status}")
        now = self._clock()
        results = _loads(row["results"])
        results.update(updates or {})
        started = row["started_at"] or (now if status in ACTIVE_JOB_STATUSES else None)
        terminal = status in TERMINAL_JOB_STATUSES
        conn.execute(
            "UPDATE jobs SET status = ?, results = ?, error_message = COALESCE(?, error_message),"
            " updated_at = ?, started_at = ?, completed_at = ?,"
            " lease_owner = CASE WHEN ? THEN NULL ELSE lease_owner END,"
            " lease_expires_at = CASE WHEN ? THEN NULL ELSE lease_expires_at END"
            " WHERE id = ?",
            (
                status.value,
                _dumps(results),
                error_message,
                now,
                started,
                now if terminal else None,
                terminal,
                terminal,
                job_id,
            ),
        )

    def _job_row(self, conn: sqlite3.Connection, job_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute(
            "SELECT * FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} not found")
        return row

    # -- stages ----------------------------------------------------------------------------

    def _stage_row(
        self, conn: sqlite3.Connection, job_id: str, stage: str
    ) -> tuple[sqlite3.Row, sqlite3.Row]:
        job = self._job_row(conn, job_id)
        row = conn.execute(
            "SELECT * FROM stages WHERE job_id = ? AND name = ?", (job_id, stage)
        ).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} has no stage {stage!r}")
        return job, row

    def _check_stage_move(self, job: sqlite3.Row, stage: sqlite3.Row, target: StageStatus) -> None:
        if BulkJobStatus(job["status"]) in TERMINAL_JOB_STATUSES:
            raise Conflict(f"job {job['id']} is {job['status']}")
        current = StageStatus(stage["status"])
        if target not in STAGE_TRANSITIONS[current]:
            raise Conflict(f"stage {stage['name']} cannot go from {current} to {target}")

    async def start_stage(self, job_id: str, stage: str, items_total: int | None = None) -> None:
        await self._run(self._start_stage, job_id, str(stage), items_total)

    def _start_stage(
        self, conn: sqlite3.Connection, job_id: str, stage: str, items_total: int | None
    ) -> None:
        job, row = self._stage_row(conn, job_id, stage)
        self._check_stage_move(job, row, StageStatus.PROCESSING)
        now = self._clock()
        restart = row["status"] == StageStatus.PROCESSING
        conn.execute(
            "UPDATE stages SET status = 'processing', items_total = COALESCE(?, items_total),"
            " started_at = COALESCE(started_at, ?), progress = CASE WHEN ? THEN progress ELSE 0 END"
            " WHERE job_id = ? AND name = ?",
            (items_total, now, restart, job_id, stage),
        )
        conn.execute("UPDATE jobs SET updated_at = ? WHERE id = ?", (now, job_id))

    async def update_stage_progress(
        self,
        job_id: str,
        stage: str,
        progress: float,
        items_completed: int | None = None,
        items_failed: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> BulkJobStatus:
        return await self._run(
            self._update_stage_progress,
            job_id,
            str(stage),
            progress,
            items_completed,
            items_failed,
            metadata,
        )

    def _update_stage_progress(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        stage: str,
        progress: float,
        items_completed: int | None,
        items_failed: int | None,
        metadata: dict[str, Any] | None,
    ) -> BulkJobStatus:
        job, row = self._stage_row(conn, job_id, stage)
        status = BulkJobStatus(job["status"])
        if status in TERMINAL_JOB_STATUSES:
            return status
        if row["status"] != StageStatus.PROCESSING:
            raise Conflict(f"stage {stage} is {row['status']}, not processing")
        merged = _loads(row["metadata"]) | (metadata or {})
        conn.execute(
            "UPDATE stages SET progress = ?, items_completed = MAX(items_completed, ?),"
            " items_failed = MAX(items_failed, ?), metadata = ? WHERE job_id = ? AND name = ?",
            (
                _clamp(progress),
                items_completed or 0,
                items_failed or 0,
                _dumps(merged),
                job_id,
                stage,
            ),
        )
        return status

    async def complete_stage(
        self,
        job_id: str,
        stage: str,
        items_completed: int | None = None,
        items_failed: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        await self._run(
            self._finish_stage,
            job_id,
            str(stage),
            StageStatus.COMPLETED,
            (items_completed, items_failed),
            metadata,
            None,
        )

    async def fail_stage(
        self,
        job_id: str,
        stage: str,
        error_message: str,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        await self._run(
            self._finish_stage,
            job_id,
            str(stage),
            StageStatus.FAILED,
            (None, None),
            metadata,
            error_message,
        )

    def _finish_stage(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        stage: str,
        target: StageStatus,
        counts: tuple[int | None, int | None],
        metadata: dict[str, Any] | None,
        error_message: str | None,
    ) -> None:
        job, row = self._stage_row(conn, job_id, stage)
        self._check_stage_move(job, row, target)
        now = self._clock()
        merged = _loads(row["metadata"]) | (metadata or {})
        progress = 1.0 if target == StageStatus.COMPLETED else row["progress"]
        conn.execute(
            "UPDATE stages SET status = ?, progress = ?, completed_at = ?,"
            " items_completed = COALESCE(?, items_completed),"
            " items_failed = COALESCE(?, items_failed), metadata = ?,"
            " error_message = COALESCE(?, error_message) WHERE job_id = ? AND name = ?",
            (target.value, progress, now, *counts, _dumps(merged), error_message, job_id, stage),
        )
        conn.execute("UPDATE jobs SET updated_at = ? WHERE id = ?", (now, job_id))

    # -- leases ----------------------------------------------------------------------------

    async def claim(
        self,
        owner: str,
        lease_s: float,
        job_types: list[str],
        limit: int = 1,
        job_id: str | None = None,
    ) -> list[Job]:
        if not job_types or limit < 1:
            return []
        return await self._run(self._claim, owner, lease_s, job_types, min(limit, MAX_PAGE), job_id)

    def _claim(
        self,
        conn: sqlite3.Connection,
        owner: str,
        lease_s: float,
        job_types: list[str],
        limit: int,
        job_id: str | None,
    ) -> list[Job]:
        now = self._clock()
        types = ",".join("?" * len(job_types))
        only = " AND id = ?" if job_id else ""
        rows = conn.execute(
            f"SELECT id FROM jobs WHERE job_type IN ({types}){only} AND ("  # only placeholders
            " (status = 'pending' AND (lease_expires_at IS NULL OR lease_expires_at < ?))"
            " OR (status IN ('initializing', 'processing', 'exporting')"
            " AND lease_expires_at IS NOT NULL AND lease_expires_at < ?))"
            " ORDER BY priority_rank, created_at LIMIT ?",
            (*job_types, *([job_id] if job_id else []), now, now, limit),
        ).fetchall()
        ids = [row["id"] for row in rows]
        conn.executemany(
            "UPDATE jobs SET lease_owner = ?, lease_expires_at = ?, attempts = attempts + 1,"
            " updated_at = ? WHERE id = ?",
            [(owner, now + lease_s, now, claimed) for claimed in ids],
        )
        return [self._load_job(conn, claimed) for claimed in ids]

    async def heartbeat(self, job_id: str, owner: str, lease_s: float) -> BulkJobStatus:
        return await self._run(self._heartbeat, job_id, owner, lease_s)

    def _heartbeat(
        self, conn: sqlite3.Connection, job_id: str, owner: str, lease_s: float
    ) -> BulkJobStatus:
        row = self._job_row(conn, job_id)
        status = BulkJobStatus(row["status"])
        if status in TERMINAL_JOB_STATUSES:
            return status
        if row["lease_owner"] != owner:
            raise Conflict(f"lease on job {job_id} was lost to {row['lease_owner']!r}")
        conn.execute(
            "UPDATE jobs SET lease_expires_at = ? WHERE id = ?", (self._clock() + lease_s, job_id)
        )
        return status

    async def release(self, job_id: str, owner: str) -> None:
        await self._run(self._release, job_id, owner)

    def _release(self, conn: sqlite3.Connection, job_id: str, owner: str) -> None:
        # An expiry in the past (not NULL) keeps an unfinished job claimable at once;
        # NULL would mark it as driven by hand.
        conn.execute(
            "UPDATE jobs SET lease_owner = NULL,"
            " lease_expires_at = CASE WHEN completed_at IS NULL THEN 0 ELSE NULL END"
            " WHERE id = ? AND lease_owner = ?",
            (job_id, owner),
        )

    # -- reads -----------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job | None:
        return await self._read(self._get_job, job_id)

    def _get_job(self, conn: sqlite3.Connection, job_id: str) -> Job | None:
        try:
            return self._load_job(conn, job_id)
        except NotFound:
            return None

    def _load_job(self, conn: sqlite3.Connection, job_id: str) -> Job:
        row = self._job_row(conn, job_id)
        stages = conn.execute(
            "SELECT * FROM stages WHERE job_id = ? ORDER BY idx", (job_id,)
        ).fetchall()
        exports = conn.execute(
            "SELECT * FROM exports WHERE job_id = ? ORDER BY created_at", (job_id,)
        ).fetchall()
        return _job_from_rows(row, stages, exports)

    async def get_user_jobs(
        self,
        user_id: str,
        status: BulkJobStatus | None = None,
        job_type: str | None = None,
        limit: int = 10,
    ) -> list[Job]:
        limit = max(1, min(limit, MAX_PAGE))
        return await self._read(self._get_user_jobs, user_id, status, job_type, limit)

    def _get_user_jobs(
        self,
        conn: sqlite3.Connection,
        user_id: str,
        status: BulkJobStatus | None,
        job_type: str | None,
        limit: int,
    ) -> list[Job]:
        rows = conn.execute(
            "SELECT id FROM jobs WHERE user_id = ? AND (? IS NULL OR status = ?)"
            " AND (? IS NULL OR job_type = ?) ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (user_id, status, status, job_type, job_type, limit),
        ).fetchall()
        return [self._load_job(conn, row["id"]) for row in rows]

    async def get_user_recent_jobs(self, user_id: str, window_s: float) -> list[Job]:
        return await self._read(self._get_user_recent_jobs, user_id, window_s)

    def _get_user_recent_jobs(
        self, conn: sqlite3.Connection, user_id: str, window_s: float
    ) -> list[Job]:
        rows = conn.execute(
            "SELECT id FROM jobs WHERE user_id = ? AND created_at > ?"
            " ORDER BY created_at DESC LIMIT ?",
            (user_id, self._clock() - window_s, MAX_PAGE),
        ).fetchall()
        return [self._load_job(conn, row["id"]) for row in rows]

    async def get_job_stats(self) -> JobStats:
        return await self._read(self._get_job_stats)

    def _get_job_stats(self, conn: sqlite3.Connection) -> JobStats:
        by_status = dict(conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"))
        by_type = dict(conn.execute("SELECT job_type, COUNT(*) FROM jobs GROUP BY job_type"))
        exports, size = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM exports"
        ).fetchone()
        return JobStats(
            total_jobs=sum(by_status.values()),
            by_status=by_status,
            by_type=by_type,
            exports=exports,
            export_bytes=size,
        )

    # -- exports ---------------------------------------------------------------------------

    async def add_export(self, export: Export) -> None:
        await self._run(self._add_export, export)

    def _add_export(self, conn: sqlite3.Connection, export: Export) -> None:
        self._job_row(conn, export.job_id)
        conn.execute(
            "INSERT INTO exports (id, job_id, user_id, format, filename, relative_path,"
            " content_type, size_bytes, sha256, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                export.id,
                export.job_id,
                export.user_id,
                export.format,
                export.filename,
                export.relative_path,
                export.content_type,
                export.size_bytes,
                export.sha256,
                export.created_at.timestamp(),
                export.expires_at.timestamp(),
            ),
        )

    async def remove_export(self, export_id: str) -> bool:
        return await self._run(self._remove_export, export_id)

    def _remove_export(self, conn: sqlite3.Connection, export_id: str) -> bool:
        return conn.execute("DELETE FROM exports WHERE id = ?", (export_id,)).rowcount > 0

    async def get_export(self, export_id: str) -> Export | None:
        return await self._read(self._get_export, export_id)

    def _get_export(self, conn: sqlite3.Connection, export_id: str) -> Export | None:
        row = conn.execute("SELECT * FROM exports WHERE id = ?", (export_id,)).fetchone()
        return None if row is None else _export_from_row(row)

    async def get_expired_exports(self, limit: int = 100) -> list[Export]:
        return await self._read(self._get_expired_exports, max(1, min(limit, MAX_PAGE)))

    def _get_expired_exports(self, conn: sqlite3.Connection, limit: int) -> list[Export]:
        rows = conn.execute(
            "SELECT * FROM exports WHERE expires_at <= ? ORDER BY expires_at LIMIT ?",
            (self._clock(), limit),
        ).fetchall()
        return [_export_from_row(row) for row in rows]

    # -- tokens ----------------------------------------------------------------------------

    async def create_token(self, token_hash: str, user_id: str, is_admin: bool, name: str) -> None:
        await self._run(self._create_token, token_hash, user_id, is_admin, name)

    def _create_token(
        self, conn: sqlite3.Connection, token_hash: str, user_id: str, is_admin: bool, name: str
    ) -> None:
        try:
            conn.execute(
                "INSERT INTO api_tokens (token_hash, user_id, is_admin, name, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (token_hash, user_id, int(is_admin), name, self._clock()),
            )
        except sqlite3.IntegrityError:
            raise Conflict("a token with this hash already exists") from None

    async def get_token(self, token_hash: str) -> ApiToken | None:
        return await self._read(self._get_token, token_hash)

    def _get_token(self, conn: sqlite3.Connection, token_hash: str) -> ApiToken | None:
        row = conn.execute(
            "SELECT * FROM api_tokens WHERE token_hash = ?", (token_hash,)
        ).fetchone()
        if row is None:
            return None
        return ApiToken(
            user_id=row["user_id"],
            is_admin=bool(row["is_admin"]),
            name=row["name"],
            created_at=from_epoch(row["created_at"]),
        )

    async def count_tokens(self) -> int:
        return await self._run(
            lambda conn: int(conn.execute("SELECT COUNT(*) FROM api_tokens").fetchone()[0])
        )


# Rows were validated on the way in, so they are rebuilt without validating again
# (model_construct); enums and datetimes are converted here explicitly.


def _stage_from_row(row: sqlite3.Row) -> Stage:
    return Stage.model_construct(
        name=row["name"],
        index=row["idx"],
        status=StageStatus(row["status"]),
        progress=row["progress"],
        items_total=row["items_total"],
        items_completed=row["items_completed"],
        items_failed=row["items_failed"],
        started_at=to_datetime(row["started_at"]),
        completed_at=to_datetime(row["completed_at"]),
        error_message=row["error_message"],
        metadata=_loads(row["metadata"]),
    )


def _export_from_row(row: sqlite3.Row) -> Export:
    return Export.model_construct(
        id=row["id"],
        job_id=row["job_id"],
        user_id=row["user_id"],
        format=row["format"],
        filename=row["filename"],
        relative_path=row["relative_path"],
        content_type=row["content_type"],
        size_bytes=row["size_bytes"],
        sha256=row["sha256"],
        created_at=from_epoch(row["created_at"]),
        expires_at=from_epoch(row["expires_at"]),
    )


def _job_from_rows(row: sqlite3.Row, stages: list[sqlite3.Row], exports: list[sqlite3.Row]) -> Job:
    return Job.model_construct(
        id=row["id"],
        job_type=row["job_type"],
        user_id=row["user_id"],
        status=BulkJobStatus(row["status"]),
        priority=row["priority"],
        job_data=_loads(row["job_data"]),
        results=_loads(row["results"]),
        estimated_duration_minutes=row["estimated_duration_minutes"],
        error_message=row["error_message"],
        created_at=from_epoch(row["created_at"]),
        updated_at=from_epoch(row["updated_at"]),
        started_at=to_datetime(row["started_at"]),
        completed_at=to_datetime(row["completed_at"]),
        lease_owner=row["lease_owner"],
        lease_expires_at=to_datetime(row["lease_expires_at"]),
        attempts=row["attempts"],
        stages=[_stage_from_row(stage) for stage in stages],
        exports=[_export_from_row(export) for export in exports],
    )


def _operation(fn: Callable[..., Any]) -> str:
    """A store operation's name for metrics: its function's name without the underscore."""
    return getattr(fn, "__name__", "operation").lstrip("_")
