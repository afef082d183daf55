"""The container half of LocalStore: container jobs, executor hosts and env templates.

Each row keeps the whole model as JSON (`doc`) plus the columns that queries filter and sort
on. Host job counts move inside the same transaction as the job status that causes them, so
they stay right whatever fails afterwards.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from src.services.containers.models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    ContainerJob,
    ContainerJobStatus,
    EnvironmentVariableTemplate,
    ExecutorHost,
    check_transition,
)
from src.services.domain import from_epoch, utcnow
from src.services.errors import Conflict, HostFull, NotFound

T = TypeVar("T")

CONTAINER_SCHEMA = """
CREATE TABLE IF NOT EXISTS container_jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    host_id TEXT,
    created_by TEXT,
    bulk_job_id TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    completed_at REAL,
    lease_owner TEXT,
    lease_expires_at REAL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS container_jobs_by_status_and_priority
    ON container_jobs(status, priority, created_at);
CREATE INDEX IF NOT EXISTS container_jobs_by_created_at ON container_jobs(created_at);
CREATE INDEX IF NOT EXISTS container_jobs_by_bulk_job ON container_jobs(bulk_job_id);
CREATE INDEX IF NOT EXISTS container_jobs_by_lease ON container_jobs(lease_expires_at);
CREATE TABLE IF NOT EXISTS executor_hosts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS env_templates (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS container_reports (
    report_id TEXT PRIMARY KEY,
    applied_at REAL NOT NULL
);
"""

#: The host every fresh store has, so local container jobs need no set-up.
DEFAULT_LOCAL_HOST = {
    "id": "local",
    "name": "local",
    "executor_type": "local",
    "max_concurrent_jobs": 4,
}

UNFINISHED = ("pending", "queued", "launching", "running", "retrying")


def ensure_default_host(conn: sqlite3.Connection) -> None:
    if conn.execute("SELECT 1 FROM executor_hosts LIMIT 1").fetchone() is None:
        host = ExecutorHost.model_validate(DEFAULT_LOCAL_HOST)
        conn.execute(
            "INSERT OR IGNORE INTO executor_hosts (id, name, doc) VALUES (?, ?, ?)",
            (host.id, host.name, host.model_dump_json()),
        )


def _job_row(job: ContainerJob) -> tuple[Any, ...]:
    return (
        job.id,
        job.status.value,
        job.host_id,
        job.created_by,
        job.bulk_job_id,
        -job.priority,
        job.created_at.timestamp(),
        job.completed_at.timestamp() if job.completed_at else None,
        job.lease_owner,
        job.lease_expires_at.timestamp() if job.lease_expires_at else None,
        job.model_dump_json(),
    )


INSERT_JOB = (
    "INSERT INTO container_jobs (id, status, host_id, created_by, bulk_job_id, priority,"
    " created_at, completed_at, lease_owner, lease_expires_at, doc)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: An update in place: INSERT OR REPLACE would give the row a new rowid, and rowid breaks
#: ties in list order (jobs created in one batch share created_at).
UPDATE_JOB = (
    "UPDATE container_jobs SET status = ?, host_id = ?, created_by = ?, bulk_job_id = ?,"
    " priority = ?, created_at = ?, completed_at = ?, lease_owner = ?, lease_expires_at = ?,"
    " doc = ? WHERE id = ?"
)


def _load(conn: sqlite3.Connection, job_id: str) -> ContainerJob:
    row = conn.execute("SELECT doc FROM container_jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise NotFound(f"container job {job_id} not found")
    return ContainerJob.model_validate_json(row[0])


def _save(conn: sqlite3.Connection, job: ContainerJob) -> None:
    job_id, *values = _job_row(job)
    conn.execute(UPDATE_JOB, (*values, job_id))


def _load_host(conn: sqlite3.Connection, host_id: str) -> ExecutorHost:
    row = conn.execute("SELECT doc FROM executor_hosts WHERE id = ?", (host_id,)).fetchone()
    if row is None:
        raise NotFound(f"executor host {host_id} not found")
    return ExecutorHost.model_validate_json(row[0])


def _save_host(conn: sqlite3.Connection, host: ExecutorHost) -> None:
    conn.execute(
        "UPDATE executor_hosts SET name = ?, doc = ? WHERE id = ?",
        (host.name, host.model_dump_json(), host.id),
    )


def _move_host_count(conn: sqlite3.Connection, host_id: str | None, delta: int) -> None:
    if host_id is None:
        return
    try:
        host = _load_host(conn, host_id)
    except NotFound:
        return  # the host was deleted; nothing to count
    if delta > 0 and host.current_job_count >= host.max_concurrent_jobs:
        raise HostFull(f"executor host {host.name} is full ({host.max_concurrent_jobs} jobs)")
    host.current_job_count = max(0, host.current_job_count + delta)
    _save_host(conn, host)


class LocalContainerOps:
    """Mixed into LocalStore; `_run` (writes) and `_read` (reads) are LocalStore's."""

    _clock: Callable[[], float]

    if TYPE_CHECKING:  # LocalStore provides these two

        async def _run(self, fn: Callable[..., T], *args: Any) -> T: ...

        async def _read(self, fn: Callable[..., T], *args: Any) -> T: ...

    # -- container jobs --------------------------------------------------------------------

    async def container_create(self, job: ContainerJob) -> None:
        await self.container_create_batch([job])

    async def container_create_batch(self, jobs: list[ContainerJob]) -> None:
        # Rows are built here, not on the store thread: the writer only inserts, and a
        # caller writing batches back to back builds the next while this one is written.
        await self._run(_insert_rows, [_job_row(job) for job in jobs])

    async def container_get(self, job_id: str) -> ContainerJob | None:
        found = await self.container_get_many([job_id])
        return found[0] if found else None

    async def container_get_many(self, job_ids: list[str]) -> list[ContainerJob]:
        return await self._read(_get_many, job_ids)

    async def container_list(
        self,
        status: str | None = None,
        host_id: str | None = None,
        created_by: str | None = None,
        bulk_job_id: str | None = None,
        limit: int = 50,
    ) -> list[ContainerJob]:
        filters = {
            "status": status,
            "host_id": host_id,
            "created_by": created_by,
            "bulk_job_id": bulk_job_id,
        }
        return await self._read(_list_jobs, filters, max(1, min(limit, 1000)))

    async def container_claim(self, owner: str, lease_s: float, limit: int) -> list[ContainerJob]:
        return await self._run(self._claim_jobs, owner, lease_s, max(1, min(limit, 200)))

    def _claim_jobs(
        self, conn: sqlite3.Connection, owner: str, lease_s: float, limit: int
    ) -> list[ContainerJob]:
        now = self._clock()
        rows = conn.execute(
            "SELECT doc FROM container_jobs WHERE (status = 'pending'"
            " AND (lease_expires_at IS NULL OR lease_expires_at < ?))"
            " OR (status IN ('queued', 'launching', 'running', 'retrying')"
            " AND lease_expires_at IS NOT NULL AND lease_expires_at < ?)"
            " ORDER BY priority, created_at LIMIT ?",
            (now, now, limit),
        ).fetchall()
        claimed = []
        for row in rows:
            job = ContainerJob.model_validate_json(row[0])
            job.lease_owner = owner
            job.lease_expires_at = from_epoch(now + lease_s)
            _save(conn, job)
            claimed.append(job)
        return claimed

    async def container_transition(
        self,
        job_id: str,
        status: str,
        fields: dict[str, Any] | None = None,
        report_id: str | None = None,
    ) -> ContainerJob:
        return await self._run(
            _transition, job_id, ContainerJobStatus(status), fields or {}, report_id
        )

    async def container_transition_many(
        self, job_ids: list[str], status: str, fields: dict[str, Any] | None = None
    ) -> tuple[list[ContainerJob], dict[str, str]]:
        return await self._run(_transition_many, job_ids, ContainerJobStatus(status), fields or {})

    async def container_migrate(
        self, job_ids: list[str], host_id: str, executor_type: str
    ) -> tuple[list[str], dict[str, str]]:
        return await self._run(_migrate, job_ids, host_id, executor_type)

    async def container_remove_finished_before(self, before: datetime, limit: int) -> int:
        return await self._run(_remove_finished_before, before.timestamp(), limit)

    async def container_count_by_status(self) -> dict[str, int]:
        return await self._read(_count_by_status)

    async def container_heartbeat(self, job_id: str, owner: str, lease_s: float) -> str:
        return await self._run(self._heartbeat_job, job_id, owner, lease_s)

    def _heartbeat_job(
        self, conn: sqlite3.Connection, job_id: str, owner: str, lease_s: float
    ) -> str:
        job = _load(conn, job_id)
        if job.status in TERMINAL_STATUSES:
            return job.status.value
        if job.lease_owner != owner:
            raise Conflict(f"lease on container job {job_id} was lost to {job.lease_owner!r}")
        job.lease_expires_at = from_epoch(self._clock() + lease_s)
        _save(conn, job)
        return job.status.value

    async def container_release(self, job_id: str, owner: str) -> None:
        await self._run(_release_job, job_id, owner)

    async def container_remove(self, job_ids: list[str], force: bool = False) -> list[str]:
        return await self._run(_remove_jobs, job_ids, force)

    # -- hosts -----------------------------------------------------------------------------

    async def host_create(self, host: ExecutorHost) -> None:
        await self._run(_insert_named, "executor_hosts", host.id, host.name, host.model_dump_json())

    async def host_update(self, host_id: str, fields: dict[str, Any]) -> ExecutorHost:
        return await self._run(_update_host, host_id, fields)

    async def host_get(self, host_id: str) -> ExecutorHost | None:
        docs = await self._read(_docs_where, "executor_hosts", "id", host_id)
        return ExecutorHost.model_validate_json(docs[0]) if docs else None

    async def host_get_by_name(self, name: str) -> ExecutorHost | None:
        docs = await self._read(_docs_where, "executor_hosts", "name", name)
        return ExecutorHost.model_validate_json(docs[0]) if docs else None

    async def host_list(self, active_only: bool = False) -> list[ExecutorHost]:
        docs = await self._read(_docs_where, "executor_hosts", None, None)
        hosts = [ExecutorHost.model_validate_json(doc) for doc in docs]
        return [host for host in hosts if host.is_active or not active_only]

    async def host_adjust_count(self, host_id: str, delta: int) -> ExecutorHost:
        return await self._run(_adjust_count, host_id, 1 if delta > 0 else -1)

    async def host_record_health(self, host_id: str, healthy: bool) -> ExecutorHost:
        return await self._run(_record_health, host_id, healthy)

    # -- templates -------------------------------------------------------------------------

    async def template_create(self, template: EnvironmentVariableTemplate) -> None:
        await self._run(
            _insert_named, "env_templates", template.id, template.name, template.model_dump_json()
        )

    async def template_update(
        self, template_id: str, fields: dict[str, Any]
    ) -> EnvironmentVariableTemplate:
        return await self._run(_update_template, template_id, fields)

    async def template_get(self, template_id: str) -> EnvironmentVariableTemplate | None:
        docs = await self._read(_docs_where, "env_templates", "id", template_id)
        return EnvironmentVariableTemplate.model_validate_json(docs[0]) if docs else None

    async def template_get_by_name(self, name: str) -> EnvironmentVariableTemplate | None:
        docs = await self._read(_docs_where, "env_templates", "name", name)
        return EnvironmentVariableTemplate.model_validate_json(docs[0]) if docs else None

    async def template_list(self) -> list[EnvironmentVariableTemplate]:
        docs = await self._read(_docs_where, "env_templates", None, None)
        return [EnvironmentVariableTemplate.model_validate_json(doc) for doc in docs]


def _insert_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    try:
        conn.executemany(INSERT_JOB, rows)
    except sqlite3.IntegrityError:
        raise Conflict("a container job with one of these ids already exists") from None


def _get_many(conn: sqlite3.Connection, job_ids: list[str]) -> list[ContainerJob]:
    found: dict[str, ContainerJob] = {}
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for (doc,) in conn.execute(f"SELECT doc FROM container_jobs WHERE id IN ({marks})", chunk):
            job = ContainerJob.model_validate_json(doc)
            found[job.id] = job
    return [found[job_id] for job_id in job_ids if job_id in found]


def _list_jobs(
    conn: sqlite3.Connection, filters: dict[str, str | None], limit: int
) -> list[ContainerJob]:
    clauses = [f"{column} = ?" for column, value in filters.items() if value is not None]
    values = [value for value in filters.values() if value is not None]
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = conn.execute(
        f"SELECT doc FROM container_jobs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
        (*values, limit),
    ).fetchall()
    return [ContainerJob.model_validate_json(row[0]) for row in rows]


def _transition(
    conn: sqlite3.Connection,
    job_id: str,
    status: ContainerJobStatus,
    fields: dict[str, Any],
    report_id: str | None,
) -> ContainerJob:
    if report_id is not None:
        seen = conn.execute(
            "INSERT OR IGNORE INTO container_reports (report_id, applied_at) VALUES (?, ?)",
            (report_id, utcnow().timestamp()),
        )
        if seen.rowcount == 0:
            return _load(conn, job_id)  # applied before: a retried report changes nothing
    job = _load(conn, job_id)
    old = job.status
    if status != old:
        check_transition(old, status)
    updated = ContainerJob.model_validate(
        job.model_dump() | fields | {"status": status, "updated_at": utcnow()}
    )
    if status in TERMINAL_STATUSES:
        updated.lease_owner, updated.lease_expires_at = None, None
        updated.completed_at = updated.completed_at or utcnow()
    _count_hosts(conn, job, updated)
    _save(conn, updated)
    return updated


def _count_hosts(conn: sqlite3.Connection, before: ContainerJob, after: ContainerJob) -> None:
    """A job holds a slot on its host while launching or running."""
    was = before.status in ACTIVE_STATUSES
    now = after.status in ACTIVE_STATUSES
    # Take the new slot first: if the host is full, nothing has changed yet.
    if now and (not was or before.host_id != after.host_id):
        _move_host_count(conn, after.host_id, +1)
    if was and (not now or before.host_id != after.host_id):
        _move_host_count(conn, before.host_id, -1)


def _transition_many(
    conn: sqlite3.Connection,
    job_ids: list[str],
    status: ContainerJobStatus,
    fields: dict[str, Any],
) -> tuple[list[ContainerJob], dict[str, str]]:
    found = {job.id: job for job in _get_many(conn, job_ids)}
    updated: list[ContainerJob] = []
    errors: dict[str, str] = {}
    for job_id in dict.fromkeys(job_ids):
        if job_id not in found:
            errors[job_id] = "not found"
            continue
        try:
            updated.append(_transition(conn, job_id, status, fields, None))
        except Conflict as exc:
            errors[job_id] = str(exc)
    return updated, errors


MOVABLE = frozenset({"pending", "queued", "retrying"})


def _migrate(
    conn: sqlite3.Connection, job_ids: list[str], host_id: str, executor_type: str
) -> tuple[list[str], dict[str, str]]:
    _load_host(conn, host_id)  # NotFound if it vanished
    found = {job.id: job for job in _get_many(conn, job_ids)}
    moved: list[str] = []
    errors: dict[str, str] = {}
    for job_id in dict.fromkeys(job_ids):
        job = found.get(job_id)
        if job is None:
            errors[job_id] = "not found"
        elif job.status.value not in MOVABLE:
            errors[job_id] = f"cannot move a {job.status.value} job: it has started"
        else:
            job.host_id, job.executor_type, job.updated_at = host_id, executor_type, utcnow()  # type: ignore[assignment]
            _save(conn, job)
            moved.append(job_id)
    return moved, errors


def _remove_finished_before(conn: sqlite3.Connection, before: float, limit: int) -> int:
    finished = ",".join(f"'{status.value}'" for status in TERMINAL_STATUSES)
    cursor = conn.execute(
        f"DELETE FROM container_jobs WHERE id IN (SELECT id FROM container_jobs"
        f" WHERE status IN ({finished}) AND created_at < ? LIMIT ?)",
        (before, max(1, limit)),
    )
    return cursor.rowcount


def _count_by_status(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT status, COUNT(*) FROM container_jobs GROUP BY status")
    return {status: count for status, count in rows}


def _release_job(conn: sqlite3.Connection, job_id: str, owner: str) -> None:
    job = _load(conn, job_id)
    if job.lease_owner != owner:
        return
    job.lease_owner = None
    # Unfinished: claimable again at once (an expiry in the past); finished: no lease.
    job.lease_expires_at = None if job.is_terminal_status else from_epoch(0)
    _save(conn, job)


def _remove_jobs(conn: sqlite3.Connection, job_ids: list[str], force: bool) -> list[str]:
    removed = []
    for job in _get_many(conn, job_ids):
        if not force and job.status.value in UNFINISHED:
            continue
        _count_hosts(conn, job, job.model_copy(update={"status": ContainerJobStatus.CANCELLED}))
        conn.execute("DELETE FROM container_jobs WHERE id = ?", (job.id,))
        removed.append(job.id)
    return removed


def _insert_named(conn: sqlite3.Connection, table: str, row_id: str, name: str, doc: str) -> None:
    try:
        conn.execute(f"INSERT INTO {table} (id, name, doc) VALUES (?, ?, ?)", (row_id, name, doc))
    except sqlite3.IntegrityError:
        raise Conflict(f"{name!r} already exists") from None


def _docs_where(conn: sqlite3.Connection, table: str, column: str | None, value: Any) -> list[str]:
    if column is None:
        return [row[0] for row in conn.execute(f"SELECT doc FROM {table} ORDER BY name LIMIT 1000")]
    return [row[0] for row in conn.execute(f"SELECT doc FROM {table} WHERE {column} = ?", (value,))]


def _update_host(conn: sqlite3.Connection, host_id: str, fields: dict[str, Any]) -> ExecutorHost:
    host = _load_host(conn, host_id)
    updated = ExecutorHost.model_validate(host.model_dump() | fields | {"updated_at": utcnow()})
    try:
        _save_host(conn, updated)
    except sqlite3.IntegrityError:
        raise Conflict(f"a host named {updated.name!r} already exists") from None
    return updated


def _adjust_count(conn: sqlite3.Connection, host_id: str, delta: int) -> ExecutorHost:
    host = _load_host(conn, host_id)
    count = host.current_job_count + delta
    if 0 <= count <= host.max_concurrent_jobs:
        host.current_job_count = count
        _save_host(conn, host)
    return host


def _record_health(conn: sqlite3.Connection, host_id: str, healthy: bool) -> ExecutorHost:
    host = _load_host(conn, host_id)
    host.health_check_failures = 0 if healthy else host.health_check_failures + 1
    if healthy:
        host.last_health_check = utcnow()
    _save_host(conn, host)
    return host


def _update_template(
    conn: sqlite3.Connection, template_id: str, fields: dict[str, Any]
) -> EnvironmentVariableTemplate:
    row = conn.execute("SELECT doc FROM env_templates WHERE id = ?", (template_id,)).fetchone()
    if row is None:
        raise NotFound(f"template {template_id} not found")
    template = EnvironmentVariableTemplate.model_validate_json(row[0])
    updated = EnvironmentVariableTemplate.model_validate(
        template.model_dump() | fields | {"updated_at": utcnow()}
    )
    try:
        conn.execute(
            "UPDATE env_templates SET name = ?, doc = ? WHERE id = ?",
            (updated.name, updated.model_dump_json(), template_id),
        )
    except sqlite3.IntegrityError:
        raise Conflict(f"a template named {updated.name!r} already exists") from None
    return updated


def new_id() -> str:
    return uuid.uuid4().hex
