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
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson

from src.services.domain import (
    ACTIVE_JOB_STATUSES,
    DIED,
    JOB_TRANSITIONS,
    STAGE_TRANSITIONS,
    TERMINAL_JOB_STATUSES,
    TERMINAL_STAGE_STATUSES,
    BulkJobStatus,
    ClaimRules,
    Export,
    Failure,
    Job,
    JobDeletion,
    JobStats,
    NewJob,
    RateLimit,
    Stage,
    StageStatus,
    from_epoch,
    gave_up,
    job_status_for_stage,
    take_turns,
    to_datetime,
)
from src.services.domain.webhooks import JOB_END_EVENTS, iso_time
from src.services.errors import (
    Conflict,
    ExportQuotaExceeded,
    NotFound,
    RateLimited,
    StoreUnavailable,
)
from src.services.metrics import StoreTimer
from src.services.store.base import MAX_PAGE
from src.services.store.local_containers import (
    CONTAINER_SCHEMA,
    LocalContainerOps,
    ensure_default_host,
    remove_container_jobs,
)
from src.services.store.local_ids import ids_by_prefix
from src.services.store.local_tokens import TOKEN_COLUMNS, TOKEN_SCHEMA, LocalTokenOps
from src.services.store.local_webhooks import WEBHOOK_SCHEMA, LocalWebhookOps, emit_event
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
    attempts INTEGER NOT NULL DEFAULT 0,
    current_stage TEXT,
    last_error TEXT,
    retry_of TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_user_and_created ON jobs(user_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_user_and_id ON jobs(user_id, id);
CREATE INDEX IF NOT EXISTS jobs_by_status_and_rank ON jobs(status, priority_rank, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_status_user_and_rank
    ON jobs(status, user_id, priority_rank, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_lease ON jobs(lease_expires_at);
CREATE INDEX IF NOT EXISTS jobs_by_completed ON jobs(completed_at);
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
CREATE INDEX IF NOT EXISTS exports_by_user_and_expires ON exports(user_id, expires_at);
"""

#: Columns added after a table's first release: (table, column, declaration). A file made by
#: an older version gets them on open, so upgrading keeps the data.
ADDED_COLUMNS = [
    ("jobs", "current_stage", "TEXT"),
    ("jobs", "last_error", "TEXT"),
    *TOKEN_COLUMNS,
    ("jobs", "retry_of", "TEXT"),
]


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    # One write transaction, so that two connections opening at once never both add one.
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, column, declaration in ADDED_COLUMNS:
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


ACTIVE_SQL = "('initializing', 'processing', 'exporting')"
TERMINAL_SQL = "('completed', 'failed', 'cancelled')"


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _loads(text: str | None) -> Any:
    return orjson.loads(text) if text else {}


def _clamp(value: float) -> float:
    if math.isnan(value):
        return 0.0
    return min(1.0, max(0.0, value))


class LocalStore(LocalContainerOps, LocalWorkOps, LocalTokenOps, LocalWebhookOps):
    """SQLite-backed Store, ContainerStore, WorkStore and WebhookStore. Safe to share between
    tasks; one per file."""

    def __init__(self, path: Path | str, clock: Clock = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bulkjobs-sqlite")
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False

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
        conn.executescript(SCHEMA + CONTAINER_SCHEMA + WORK_SCHEMA + TOKEN_SCHEMA + WEBHOOK_SCHEMA)
        _add_missing_columns(conn)
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

    async def create(self, job: NewJob, limit: RateLimit | None) -> str:
        return await self._run(self._create, job, limit)

    def _create(self, conn: sqlite3.Connection, job: NewJob, limit: RateLimit | None) -> str:
        now = self._clock()
        if limit is not None:
            self._check_rate_limit(conn, job.user_id, limit, now)
        job_id = job.job_id or uuid.uuid4().hex
        try:
            conn.execute(
                "INSERT INTO jobs (id, job_type, user_id, status, priority, priority_rank,"
                " job_data, estimated_duration_minutes, created_at, updated_at, retry_of)"
                " VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)",
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
                    job.retry_of,
                ),
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"job {job_id} already exists") from None
        conn.executemany(
            "INSERT INTO stages (job_id, name, idx, status) VALUES (?, ?, ?, 'pending')",
            [(job_id, name, index) for index, name in enumerate(job.stages)],
        )
        data = {"job_id": job_id, "job_type": job.job_type, "user_id": job.user_id}
        emit_event(conn, now, "job.created", job.user_id, data | {"status": "pending"})
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
        if status in JOB_END_EVENTS and status != current:
            _emit_job_end(conn, row, status, error_message or row["error_message"], now)

    def _job_row(self, conn: sqlite3.Connection, job_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute(
            "SELECT * FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} not found")
        return row

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
        # The job follows its stage: initializing, processing or exporting, by the stage.
        conn.execute(
            "UPDATE jobs SET status = ?, current_stage = ?, started_at = COALESCE(started_at, ?),"
            " updated_at = ? WHERE id = ?",
            (job_status_for_stage(stage).value, stage, now, now, job_id),
        )

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
        fatal: bool = True,
    ) -> None:
        await self._run(
            self._finish_stage,
            job_id,
            str(stage),
            StageStatus.FAILED,
            (None, None),
            metadata,
            error_message,
            fatal,
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
        fatal: bool = False,
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
        _emit_stage_end(conn, job, row, target, counts, error_message, now)
        self._follow_stages(conn, job_id, stage, error_message if fatal else None)

    def _follow_stages(
        self, conn: sqlite3.Connection, job_id: str, stage: str, fatal_error: str | None
    ) -> None:
        """The job after a stage ended: failed by a fatal stage failure, completed once no
        stage is left to run, else still running."""
        if fatal_error is not None:
            conn.execute("UPDATE jobs SET current_stage = ? WHERE id = ?", (stage, job_id))
            self._update_status(conn, job_id, BulkJobStatus.FAILED, None, fatal_error)
            return
        unfinished = conn.execute(
            "SELECT COUNT(*) FROM stages WHERE job_id = ? AND status NOT IN (?, ?, ?)",
            (job_id, *TERMINAL_STAGE_STATUSES),
        ).fetchone()[0]
        if unfinished == 0:
            self._update_status(conn, job_id, BulkJobStatus.COMPLETED, None, None)
        else:
            conn.execute("UPDATE jobs SET updated_at = ? WHERE id = ?", (self._clock(), job_id))

    async def claim(
        self,
        owner: str,
        lease_s: float,
        job_types: list[str],
        limit: int = 1,
        job_id: str | None = None,
        rules: ClaimRules | None = None,
    ) -> list[Job]:
        if not job_types or limit < 1:
            return []
        rules = rules or ClaimRules()
        return await self._run(
            self._claim, owner, lease_s, _JobFilter(job_types, job_id), min(limit, MAX_PAGE), rules
        )

    def _claim(
        self,
        conn: sqlite3.Connection,
        owner: str,
        lease_s: float,
        wanted: _JobFilter,
        limit: int,
        rules: ClaimRules,
    ) -> list[Job]:
        now = self._clock()
        _give_up_jobs(conn, wanted, now, rules.max_attempts)
        ids = _expired_jobs(conn, wanted, now, limit)
        if len(ids) < limit:
            ids += _fair_pending_jobs(conn, wanted, now, limit - len(ids), rules)
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

    async def release(self, job_id: str, owner: str, failure: Failure | None = None) -> None:
        await self._run(self._release, job_id, owner, failure)

    def _release(
        self, conn: sqlite3.Connection, job_id: str, owner: str, failure: Failure | None
    ) -> None:
        row = conn.execute(
            "SELECT lease_owner, attempts, completed_at FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None or row["lease_owner"] != owner:
            return
        now = self._clock()
        values: tuple[Any, ...] = ()
        if row["completed_at"] is not None:
            sql = "lease_owner = NULL, lease_expires_at = NULL"
        elif failure is None:
            # An expiry in the past (not NULL) keeps the job claimable at once; NULL would
            # mark it as driven by hand. A hand-back is not an attempt.
            sql = "lease_owner = NULL, lease_expires_at = 0, attempts = MAX(0, attempts - 1)"
        elif row["attempts"] >= failure.max_attempts:
            _fail_for_good(conn, job_id, gave_up(row["attempts"], failure.error), now)
            return
        else:
            sql = "lease_owner = NULL, lease_expires_at = ?, last_error = ?"
            values = (now + max(0.0, failure.retry_in_s), failure.error)
        conn.execute(f"UPDATE jobs SET {sql}, updated_at = ? WHERE id = ?", (*values, now, job_id))

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

    async def get_job_ids_by_prefix(
        self, prefix: str, user_id: str | None = None, limit: int = 10
    ) -> list[str]:
        return await self._read(ids_by_prefix, "jobs", "user_id", prefix, user_id, limit)

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

    async def add_export(self, export: Export, max_user_bytes: int | None = None) -> None:
        await self._run(self._add_export, export, max_user_bytes)

    def _add_export(
        self, conn: sqlite3.Connection, export: Export, max_user_bytes: int | None
    ) -> None:
        """Idempotent by id (a resumed stage registers its export again): the record is
        replaced, never doubled; an id of another job's export is a Conflict."""
        self._job_row(conn, export.job_id)
        row = conn.execute("SELECT job_id FROM exports WHERE id = ?", (export.id,)).fetchone()
        if row is not None and row[0] != export.job_id:
            raise Conflict(f"export {export.id} belongs to another job")
        if max_user_bytes is not None:
            held = self._export_bytes(conn, export.user_id, export.id)
            if held + export.size_bytes > max_user_bytes:
                raise ExportQuotaExceeded(export.user_id, max_user_bytes, held, export.size_bytes)
        if row is None:  # a resumed stage registering its export again sends no second event
            _emit_export_ready(conn, export, self._clock())
        conn.execute(
            "INSERT OR REPLACE INTO exports (id, job_id, user_id, format, filename,"
            " relative_path, content_type, size_bytes, sha256, created_at, expires_at)"
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

    async def get_user_export_bytes(self, user_id: str) -> int:
        return await self._read(self._export_bytes, user_id, None)

    def _export_bytes(self, conn: sqlite3.Connection, user_id: str, but: str | None) -> int:
        """Bytes of the user's unexpired exports, leaving out the export `but` (the record
        that a registration replaces)."""
        row = conn.execute(
            "SELECT COALESCE(SUM(size_bytes), 0) FROM exports"
            " WHERE user_id = ? AND expires_at > ? AND id IS NOT ?",
            (user_id, self._clock(), but),
        ).fetchone()
        return int(row[0])

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

    async def delete_job(self, job_id: str, limit: int = 100) -> JobDeletion:
        return await self._run(self._delete_job, job_id, max(1, min(limit, 500)))

    def _delete_job(self, conn: sqlite3.Connection, job_id: str, limit: int) -> JobDeletion:
        _check_deletable(self._job_row(conn, job_id), self._clock())
        children = conn.execute(
            "SELECT id FROM container_jobs WHERE bulk_job_id = ? LIMIT ?", (job_id, limit + 1)
        ).fetchall()
        batch = [row["id"] for row in children[:limit]]
        removed = len(remove_container_jobs(conn, batch, True))
        if len(children) > limit:  # more are left: the job goes on a later call
            return JobDeletion(done=False, container_jobs=removed)
        exports = conn.execute(
            "DELETE FROM exports WHERE id IN (SELECT id FROM exports WHERE job_id = ? LIMIT ?)",
            (job_id, limit),
        ).rowcount
        if exports == limit:
            return JobDeletion(done=False, container_jobs=removed, exports=exports)
        stages = conn.execute("DELETE FROM stages WHERE job_id = ?", (job_id,)).rowcount
        conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return JobDeletion(done=True, container_jobs=removed, stages=stages, exports=exports)

    async def get_finished_before(self, before: datetime, limit: int = 100) -> list[str]:
        limit = max(1, min(limit, MAX_PAGE))
        return await self._read(self._get_finished_before, before.timestamp(), limit)

    def _get_finished_before(
        self, conn: sqlite3.Connection, before: float, limit: int
    ) -> list[str]:
        rows = conn.execute(
            f"SELECT id FROM jobs WHERE completed_at < ? AND status IN {TERMINAL_SQL}"
            " ORDER BY completed_at LIMIT ?",
            (before, limit),
        ).fetchall()
        return [row["id"] for row in rows]


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
        current_stage=row["current_stage"],
        last_error=row["last_error"],
        retry_of=row["retry_of"],
        stages=[_stage_from_row(stage) for stage in stages],
        exports=[_export_from_row(export) for export in exports],
    )


class _JobFilter:
    """Which jobs a claim may take: these types, or only the one job `job_id`."""

    def __init__(self, job_types: list[str], job_id: str | None) -> None:
        marks = ",".join("?" * len(job_types))
        self.sql = f"job_type IN ({marks})" + (" AND id = ?" if job_id else "")
        self.values: tuple[str, ...] = (*job_types, *([job_id] if job_id else []))


def _give_up_jobs(
    conn: sqlite3.Connection, wanted: _JobFilter, now: float, max_attempts: int
) -> None:
    """Fail the unfinished jobs whose runner died holding them (its lease expired with the
    owner still set) after they used `max_attempts` claims."""
    rows = conn.execute(
        f"SELECT id, attempts, last_error FROM jobs WHERE {wanted.sql}"  # placeholders only
        " AND completed_at IS NULL AND lease_owner IS NOT NULL AND lease_expires_at < ?"
        " AND attempts >= ? LIMIT ?",
        (*wanted.values, now, max_attempts, MAX_PAGE),
    ).fetchall()
    for row in rows:
        _fail_for_good(conn, row["id"], gave_up(row["attempts"], row["last_error"] or DIED), now)


def _fail_for_good(conn: sqlite3.Connection, job_id: str, message: str, now: float) -> None:
    conn.execute(
        "UPDATE jobs SET status = 'failed', error_message = ?, last_error = ?,"
        " completed_at = ?, updated_at = ?, lease_owner = NULL, lease_expires_at = NULL"
        " WHERE id = ?",
        (message, message, now, now, job_id),
    )
    row = conn.execute("SELECT id, job_type, user_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
    _emit_job_end(conn, row, BulkJobStatus.FAILED, message, now)


# Webhook events, written in the transaction of the change they report (see local_webhooks).


def _emit_job_end(
    conn: sqlite3.Connection,
    job: sqlite3.Row,
    status: BulkJobStatus,
    error_message: str | None,
    now: float,
) -> None:
    data: dict[str, Any] = {
        "job_id": job["id"],
        "job_type": job["job_type"],
        "user_id": job["user_id"],
        "status": status.value,
    }
    if status != BulkJobStatus.COMPLETED and error_message:
        data["error_message"] = error_message
    emit_event(conn, now, JOB_END_EVENTS[status.value], job["user_id"], data)


def _emit_stage_end(
    conn: sqlite3.Connection,
    job: sqlite3.Row,
    stage: sqlite3.Row,
    target: StageStatus,
    counts: tuple[int | None, int | None],
    error_message: str | None,
    now: float,
) -> None:
    completed, failed = counts
    data: dict[str, Any] = {
        "job_id": job["id"],
        "job_type": job["job_type"],
        "user_id": job["user_id"],
        "stage": stage["name"],
        "status": target.value,
        "items_completed": stage["items_completed"] if completed is None else completed,
        "items_failed": stage["items_failed"] if failed is None else failed,
    }
    if target == StageStatus.FAILED:
        data["error_message"] = error_message or stage["error_message"]
    kind = "job.stage_completed" if target == StageStatus.COMPLETED else "job.stage_failed"
    emit_event(conn, now, kind, job["user_id"], data)


def _emit_export_ready(conn: sqlite3.Connection, export: Export, now: float) -> None:
    data = {
        "export_id": export.id,
        "job_id": export.job_id,
        "user_id": export.user_id,
        "format": export.format,
        "filename": export.filename,
        "size_bytes": export.size_bytes,
        "sha256": export.sha256,
        "expires_at": iso_time(export.expires_at.timestamp()),
    }
    emit_event(conn, now, "export.ready", export.user_id, data)


def _expired_jobs(
    conn: sqlite3.Connection, wanted: _JobFilter, now: float, limit: int
) -> list[str]:
    """Running jobs whose runner stopped heartbeating (0: handed back), oldest expiry first."""
    rows = conn.execute(
        f"SELECT id FROM jobs WHERE {wanted.sql} AND status IN {ACTIVE_SQL}"  # placeholders
        " AND lease_expires_at IS NOT NULL AND lease_expires_at < ?"
        " ORDER BY lease_expires_at LIMIT ?",
        (*wanted.values, now, limit),
    ).fetchall()
    return [row["id"] for row in rows]


def _fair_pending_jobs(
    conn: sqlite3.Connection, wanted: _JobFilter, now: float, limit: int, rules: ClaimRules
) -> list[str]:
    """Pending jobs, users taking turns: one job per waiting user per round, users with fewer
    running jobs first (then by their best waiting job); users at the cap wait."""
    waiting = (
        f"status = 'pending' AND {wanted.sql}"
        " AND (lease_expires_at IS NULL OR lease_expires_at < ?)"
    )
    heads = conn.execute(
        f"SELECT user_id, MIN(priority_rank) AS rank, MIN(created_at) AS oldest FROM jobs"
        f" WHERE {waiting} GROUP BY user_id",  # placeholders only
        (*wanted.values, now),
    ).fetchall()
    if not heads:
        return []
    running = _running_by_user(conn, now)
    cap = rules.max_running_per_user
    order = sorted(heads, key=lambda row: (running.get(row[0], 0), row[1], row[2], row[0]))
    queues: list[list[str]] = []
    for row in order[:limit]:
        room = limit if cap is None else min(limit, cap - running.get(row[0], 0))
        if room <= 0:
            continue
        found = conn.execute(
            f"SELECT id FROM jobs WHERE {waiting} AND user_id = ?"  # placeholders only
            " ORDER BY priority_rank, created_at LIMIT ?",
            (*wanted.values, now, row[0], room),
        ).fetchall()
        queues.append([job["id"] for job in found])
    return take_turns(queues, limit)


def _running_by_user(conn: sqlite3.Connection, now: float) -> dict[str, int]:
    """Unfinished jobs a runner holds now, by user (jobs driven by hand hold no lease and do
    not count; nor do jobs whose runner died)."""
    rows = conn.execute(
        "SELECT user_id, COUNT(*) FROM jobs WHERE lease_expires_at >= ?"
        " AND lease_owner IS NOT NULL AND completed_at IS NULL GROUP BY user_id",
        (now,),
    )
    return {user: count for user, count in rows}


def _check_deletable(row: sqlite3.Row, now: float) -> None:
    """Conflict, saying why, unless the job has finished and no runner holds it."""
    if BulkJobStatus(row["status"]) not in TERMINAL_JOB_STATUSES:
        raise Conflict(f"job {row['id']} is {row['status']}: cancel it first, then delete it")
    if row["lease_owner"] is not None and (row["lease_expires_at"] or 0) > now:
        raise Conflict(f"job {row['id']} is still stopping (its runner holds it); try again soon")


def _operation(fn: Callable[..., Any]) -> str:
    """A store operation's name for metrics: its function's name without the underscore."""
    return getattr(fn, "__name__", "operation").lstrip("_")
