"""The container half of LocalStore: container jobs, executor hosts and env templates.

Each row keeps the whole model as JSON (`doc`) plus the columns that queries filter and sort
on. Host job counts move inside the same transaction as the job status that causes them, so
they stay right whatever fails afterwards.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from src.services.domain import (
    DIED,
    ClaimRules,
    Failure,
    from_epoch,
    gave_up,
    take_turns,
    utcnow,
)
from src.services.domain.containers import (
    ACTIVE_STATUSES,
    DEFAULT_LOCAL_HOST,
    HOLD_TTL_S,
    MAX_HEALTH_FAILURES,
    TERMINAL_STATUSES,
    ContainerJob,
    ContainerJobStatus,
    ContainerQuota,
    EnvironmentVariableTemplate,
    ExecutorHost,
    ExecutorType,
    check_transition,
    isolation_refusal,
)
from src.services.domain.webhooks import CONTAINER_END_EVENTS
from src.services.errors import Conflict, ContainerQuotaExceeded, HostFull, NotFound
from src.services.store.local_ids import ids_by_prefix
from src.services.store.local_webhooks import emit_event

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
DROP INDEX IF EXISTS container_jobs_by_status_and_priority;
CREATE INDEX IF NOT EXISTS container_jobs_by_created_at ON container_jobs(created_at);
CREATE INDEX IF NOT EXISTS container_jobs_by_bulk_job ON container_jobs(bulk_job_id);
CREATE INDEX IF NOT EXISTS container_jobs_by_owner_and_id ON container_jobs(created_by, id);
CREATE INDEX IF NOT EXISTS container_jobs_by_lease ON container_jobs(lease_expires_at);
-- Claims: pending jobs by host (a full host's backlog is skipped whole), then by user.
CREATE INDEX IF NOT EXISTS container_jobs_by_status_host_and_user
    ON container_jobs(status, host_id, created_by, priority, created_at);
-- Per-user quota: an owner's unfinished jobs are counted through this index.
CREATE INDEX IF NOT EXISTS container_jobs_by_owner_and_status
    ON container_jobs(created_by, status);
-- Jobs reserved by bulk creations under way (see ContainerQuota).
CREATE TABLE IF NOT EXISTS container_holds (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    remaining INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS container_holds_by_user ON container_holds(user_id, expires_at);
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


def _copy_rows(job: ContainerJob, job_ids: list[str]) -> list[tuple[Any, ...]]:
    """The rows of copies of `job` under `job_ids`, as `_job_row` would build each."""
    marker = f"copy-{uuid.uuid4().hex}"
    row = _job_row(job.model_copy(update={"id": marker}))
    head, tail = row[-1].split(f'"{marker}"')
    return [
        (job_id, *row[1:-1], f"{head}{orjson.dumps(job_id).decode()}{tail}") for job_id in job_ids
    ]


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

    async def container_create(
        self, job: ContainerJob, quota: ContainerQuota | None = None
    ) -> None:
        await self.container_create_batch([job], quota)

    async def container_create_batch(
        self, jobs: list[ContainerJob], quota: ContainerQuota | None = None
    ) -> None:
        # Rows are built here, not on the store thread: the writer only inserts, and a
        # caller writing batches back to back builds the next while this one is written.
        owners = _count_owners(job.created_by for job in jobs)
        rows = [_job_row(job) for job in jobs]
        await self._run(self._insert_within, rows, owners, quota, _untrusted_hosts(jobs))

    async def container_create_copies(
        self, job: ContainerJob, job_ids: list[str], quota: ContainerQuota | None = None
    ) -> None:
        # The document is encoded once; each copy only splices its id in.
        owners = _count_owners([job.created_by] * len(job_ids))
        hosts = _untrusted_hosts([job]) if job_ids else set()
        await self._run(self._insert_within, _copy_rows(job, job_ids), owners, quota, hosts)

    def _insert_within(
        self,
        conn: sqlite3.Connection,
        rows: list[tuple[Any, ...]],
        owners: dict[str, int],
        quota: ContainerQuota | None,
        untrusted_hosts: set[str],
    ) -> None:
        if quota is not None:
            now = self._clock()
            for owner, count in owners.items():
                _take_quota(conn, owner, count, quota, now)
        _insert_rows(conn, rows, untrusted_hosts)

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

    async def container_get_ids_by_prefix(
        self, prefix: str, created_by: str | None = None, limit: int = 10
    ) -> list[str]:
        return await self._read(
            ids_by_prefix, "container_jobs", "created_by", prefix, created_by, limit
        )

    async def container_claim(
        self,
        owner: str,
        lease_s: float,
        limit: int,
        bulk_job_id: str | None = None,
        rules: ClaimRules | None = None,
    ) -> list[ContainerJob]:
        return await self._run(
            self._claim_jobs,
            owner,
            lease_s,
            max(1, min(limit, 200)),
            bulk_job_id,
            rules or ClaimRules(),
        )

    def _claim_jobs(
        self,
        conn: sqlite3.Connection,
        owner: str,
        lease_s: float,
        limit: int,
        bulk_job_id: str | None,
        rules: ClaimRules,
    ) -> list[ContainerJob]:
        now = self._clock()
        claimed = _expired(conn, now, limit, bulk_job_id, rules.max_attempts)
        if len(claimed) < limit:
            claimed += _fair_pending(conn, now, limit - len(claimed), bulk_job_id)
        for job in claimed:
            job.lease_owner = owner
            job.lease_expires_at = from_epoch(now + lease_s)
            job.attempts += 1
            _save(conn, job)
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
        self, job_ids: list[str], host_id: str, executor_type: ExecutorType
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

    async def container_release(
        self, job_id: str, owner: str, failure: Failure | None = None
    ) -> str:
        return await self._run(self._release_job, job_id, owner, failure)

    def _release_job(
        self, conn: sqlite3.Connection, job_id: str, owner: str, failure: Failure | None
    ) -> str:
        job = _load(conn, job_id)
        if job.lease_owner != owner:
            return job.status.value
        if failure is not None and not job.is_terminal_status:
            if job.attempts >= failure.max_attempts:
                return _give_up(conn, job, gave_up(job.attempts, failure.error)).status.value
            job.last_error = failure.error
        job.lease_owner = None
        if job.is_terminal_status:
            job.lease_expires_at = None
        elif failure is None:  # a hand-back: claimable at once, and not an attempt
            job.lease_expires_at = from_epoch(0)
            job.attempts = max(0, job.attempts - 1)
        else:
            job.lease_expires_at = from_epoch(self._clock() + max(0.0, failure.retry_in_s))
        _save(conn, job)
        return job.status.value

    async def container_remove(self, job_ids: list[str], force: bool = False) -> list[str]:
        return await self._run(remove_container_jobs, job_ids, force)

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

    async def host_record_health(
        self,
        host_id: str,
        healthy: bool,
        error: str | None = None,
        threshold: int = MAX_HEALTH_FAILURES,
        probe: bool = True,
    ) -> ExecutorHost:
        outcome = HealthOutcome(healthy, error, max(1, threshold), probe)
        return await self._run(_record_health, host_id, outcome)

    async def host_claim_probes(self, interval_s: float, limit: int) -> list[ExecutorHost]:
        return await self._run(self._claim_probes, interval_s, max(1, min(limit, 1000)))

    def _claim_probes(
        self, conn: sqlite3.Connection, interval_s: float, limit: int
    ) -> list[ExecutorHost]:
        now = self._clock()
        docs = [row[0] for row in conn.execute("SELECT doc FROM executor_hosts")]
        hosts = [ExecutorHost.model_validate_json(doc) for doc in docs]
        due = [host for host in hosts if host.is_active and _due(host, now)]
        due.sort(key=lambda host: (_epoch(host.next_probe_at), host.name))
        for host in due[:limit]:
            host.next_probe_at = from_epoch(now + interval_s)
            _save_host(conn, host)
        return due[:limit]

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


def _count_owners(owners: Iterable[str | None]) -> dict[str, int]:
    """New jobs per owner (jobs without one count against no quota)."""
    counts: dict[str, int] = {}
    for owner in owners:
        if owner is not None:
            counts[owner] = counts.get(owner, 0) + 1
    return counts


def _take_quota(
    conn: sqlite3.Connection, owner: str, count: int, quota: ContainerQuota, now: float
) -> None:
    """Room for `count` new jobs of `owner` (and `quota.hold` more, reserved), or
    ContainerQuotaExceeded. The jobs draw on the reservation `quota.hold_id` first."""
    hold = _hold(conn, quota.hold_id, owner, now)
    covered = min(count, hold)
    extra = count - covered + quota.hold
    if extra > 0:
        usage = _unfinished(conn, owner, now, quota.max_unfinished + 1)
        if usage + extra > quota.max_unfinished:
            raise ContainerQuotaExceeded(owner, quota.max_unfinished, usage, count + quota.hold)
    if quota.hold_id is not None and (hold or quota.hold):
        _keep_hold(conn, quota.hold_id, owner, hold - covered + quota.hold, now)


def _hold(conn: sqlite3.Connection, hold_id: str | None, owner: str, now: float) -> int:
    """Jobs still reserved under `hold_id` for `owner` (0 when none, or expired)."""
    if hold_id is None:
        return 0
    row = conn.execute(
        "SELECT remaining FROM container_holds WHERE id = ? AND user_id = ? AND expires_at > ?",
        (hold_id, owner, now),
    ).fetchone()
    return int(row[0]) if row else 0


def _keep_hold(
    conn: sqlite3.Connection, hold_id: str, owner: str, remaining: int, now: float
) -> None:
    """Reserve `remaining` jobs under `hold_id` (none left: the reservation ends)."""
    conn.execute("DELETE FROM container_holds WHERE id = ? OR expires_at <= ?", (hold_id, now))
    if remaining > 0:
        conn.execute(
            "INSERT INTO container_holds (id, user_id, remaining, expires_at) VALUES (?, ?, ?, ?)",
            (hold_id, owner, remaining, now + HOLD_TTL_S),
        )


def _unfinished(conn: sqlite3.Connection, owner: str, now: float, cap: int) -> int:
    """The owner's unfinished jobs plus the jobs their creations under way reserve; jobs are
    counted up to `cap` (enough to decide, as in convex/model/quotas.ts)."""
    (jobs,) = conn.execute(
        f"SELECT COUNT(*) FROM (SELECT 1 FROM container_jobs WHERE created_by = ?"
        f" AND status IN {UNFINISHED_SQL} LIMIT ?)",
        (owner, cap),
    ).fetchone()
    (held,) = conn.execute(
        "SELECT COALESCE(SUM(remaining), 0) FROM container_holds"
        " WHERE user_id = ? AND expires_at > ?",
        (owner, now),
    ).fetchone()
    return int(jobs) + int(held)


def _untrusted_hosts(jobs: list[ContainerJob]) -> set[str]:
    """The hosts non-admins' jobs are written to: each must isolate them."""
    return {job.host_id for job in jobs if job.untrusted and job.host_id}


def _check_isolation(conn: sqlite3.Connection, host_id: str | None, untrusted: bool) -> None:
    """Conflict when the host may not run a job of this kind (a host that is gone runs
    nothing, so there is nothing to refuse)."""
    if host_id is None or not untrusted:
        return
    try:
        host = _load_host(conn, host_id)
    except NotFound:
        return
    refusal = isolation_refusal(host, untrusted)
    if refusal is not None:
        raise Conflict(refusal)


def _insert_rows(
    conn: sqlite3.Connection, rows: list[tuple[Any, ...]], untrusted_hosts: set[str]
) -> None:
    for host_id in untrusted_hosts:
        _check_isolation(conn, host_id, untrusted=True)
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
    if updated.host_id != job.host_id:
        _check_isolation(conn, updated.host_id, updated.untrusted)
    _count_hosts(conn, job, updated)
    _save(conn, updated)
    if status != old and status.value in CONTAINER_END_EVENTS:
        _emit_container_end(conn, updated)
    return updated


def _emit_container_end(conn: sqlite3.Connection, job: ContainerJob) -> None:
    """The webhook event of a container job that ended, in the transaction that ended it."""
    data = {
        "container_job_id": job.id,
        "bulk_job_id": job.bulk_job_id,
        "user_id": job.created_by,
        "status": job.status.value,
        "exit_code": job.exit_code,
        "status_message": job.status_message,
    }
    event = CONTAINER_END_EVENTS[job.status.value]
    emit_event(conn, time.time(), event, job.created_by, data)


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
    conn: sqlite3.Connection, job_ids: list[str], host_id: str, executor_type: ExecutorType
) -> tuple[list[str], dict[str, str]]:
    host = _load_host(conn, host_id)  # NotFound if it vanished
    found = {job.id: job for job in _get_many(conn, job_ids)}
    moved: list[str] = []
    errors: dict[str, str] = {}
    for job_id in dict.fromkeys(job_ids):
        job = found.get(job_id)
        refusal = None if job is None else isolation_refusal(host, job.untrusted)
        if job is None:
            errors[job_id] = "not found"
        elif job.status.value not in MOVABLE:
            errors[job_id] = f"cannot move a {job.status.value} job: it has started"
        elif refusal is not None:
            errors[job_id] = refusal
        else:
            job.host_id, job.executor_type, job.updated_at = host_id, executor_type, utcnow()
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


UNFINISHED_SQL = "('pending', 'queued', 'launching', 'running', 'retrying')"
#: Claimed and not yet launched or running: such a job will take a slot on its host soon.
CLAIMED_SQL = "('pending', 'queued', 'retrying')"
#: Work a user has in hand (taking turns: users with fewer go first).
IN_HAND_SQL = "('queued', 'launching', 'running', 'retrying')"


def _give_up(conn: sqlite3.Connection, job: ContainerJob, message: str) -> ContainerJob:
    """Fail a job whose attempts are used up (its host slot, if it held one, is freed)."""
    return _transition(
        conn,
        job.id,
        ContainerJobStatus.FAILED,
        {"status_message": message, "last_error": message},
        None,
    )


def _bulk_filter(bulk_job_id: str | None) -> tuple[str, tuple[str, ...]]:
    return (" AND bulk_job_id = ?", (bulk_job_id,)) if bulk_job_id else ("", ())


def _expired(
    conn: sqlite3.Connection, now: float, limit: int, bulk_job_id: str | None, max_attempts: int
) -> list[ContainerJob]:
    """Unfinished jobs whose processor stopped heartbeating (0: handed back), to be picked up
    where they are; a job whose processor died holding it `max_attempts` times is failed."""
    extra, values = _bulk_filter(bulk_job_id)
    rows = conn.execute(
        f"SELECT doc FROM container_jobs WHERE status IN {UNFINISHED_SQL}{extra}"
        " AND lease_expires_at IS NOT NULL AND lease_expires_at < ?"
        " ORDER BY lease_expires_at LIMIT ?",
        (*values, now, limit + 200),
    ).fetchall()
    picked: list[ContainerJob] = []
    for (doc,) in rows:
        job = ContainerJob.model_validate_json(doc)
        if job.lease_owner is not None and job.attempts >= max_attempts:
            _give_up(conn, job, gave_up(job.attempts, job.last_error or DIED))
        elif job.status != ContainerJobStatus.PENDING and len(picked) < limit:
            picked.append(job)
    return picked


def _open_hosts(conn: sqlite3.Connection, now: float) -> dict[str, int]:
    """Free slots by host, less the jobs claimed for it and not yet launched. A full host is
    left out, so its backlog is not even read."""
    claimed = dict(
        conn.execute(
            f"SELECT host_id, COUNT(*) FROM container_jobs WHERE lease_expires_at >= ?"
            f" AND lease_owner IS NOT NULL AND status IN {CLAIMED_SQL} GROUP BY host_id",
            (now,),
        ).fetchall()
    )
    free: dict[str, int] = {}
    for (doc,) in conn.execute("SELECT doc FROM executor_hosts"):
        host = ExecutorHost.model_validate_json(doc)
        slots = host.max_concurrent_jobs - host.current_job_count - claimed.get(host.id, 0)
        if slots > 0:
            free[host.id] = slots
    return free


def _fair_pending(
    conn: sqlite3.Connection, now: float, limit: int, bulk_job_id: str | None
) -> list[ContainerJob]:
    """Pending jobs on hosts with a free slot, users taking turns: one job per waiting user
    per round, users with fewer jobs held by processors first (then by their best waiting job)."""
    free = _open_hosts(conn, now)
    if not free:
        return []
    extra, values = _bulk_filter(bulk_job_id)
    waiting = (
        f"status = 'pending' AND host_id IN ({','.join('?' * len(free))}){extra}"
        " AND (lease_expires_at IS NULL OR lease_expires_at < ?)"
    )
    args = (*free, *values, now)
    heads = conn.execute(
        f"SELECT created_by, MIN(priority), MIN(created_at) FROM container_jobs"
        f" WHERE {waiting} GROUP BY created_by",
        args,
    ).fetchall()
    in_hand = dict(
        conn.execute(
            f"SELECT created_by, COUNT(*) FROM container_jobs WHERE lease_expires_at >= ?"
            f" AND lease_owner IS NOT NULL AND status IN {UNFINISHED_SQL} GROUP BY created_by",
            (now,),
        ).fetchall()
    )
    order = sorted(heads, key=lambda row: (in_hand.get(row[0], 0), row[1], row[2], row[0] or ""))
    queues = [
        [
            ContainerJob.model_validate_json(doc)
            for (doc,) in conn.execute(
                f"SELECT doc FROM container_jobs WHERE {waiting} AND created_by IS ?"
                " ORDER BY priority, created_at LIMIT ?",
                (*args, row[0], limit),
            )
        ]
        for row in order[:limit]
    ]
    return _within_slots(take_turns(queues, sum(len(queue) for queue in queues)), free, limit)


def _within_slots(jobs: list[ContainerJob], free: dict[str, int], limit: int) -> list[ContainerJob]:
    """The jobs in turn order, no more per host than it has free slots."""
    picked: list[ContainerJob] = []
    for job in jobs:
        if len(picked) < limit and free.get(job.host_id or "", 0) > 0:
            free[job.host_id or ""] -= 1
            picked.append(job)
    return picked


def remove_container_jobs(conn: sqlite3.Connection, job_ids: list[str], force: bool) -> list[str]:
    """Delete finished jobs (any, with `force`: their host slots are freed); returns ids."""
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


@dataclass(frozen=True)
class HealthOutcome:
    healthy: bool
    error: str | None
    threshold: int
    #: A probe (or a check by hand); False: a launch that failed for the host's sake.
    probe: bool


def _record_health(conn: sqlite3.Connection, host_id: str, outcome: HealthOutcome) -> ExecutorHost:
    host = _load_host(conn, host_id)
    if outcome.healthy:
        host.health_check_failures, host.last_health_error = 0, None
    else:
        host.health_check_failures += 1
        host.last_health_error = outcome.error or "unhealthy"
    host.healthy = host.health_check_failures < outcome.threshold
    if outcome.probe:
        host.last_health_check = utcnow()
    _save_host(conn, host)
    return host


def _epoch(moment: datetime | None) -> float:
    return moment.timestamp() if moment is not None else 0.0


def _due(host: ExecutorHost, now: float) -> bool:
    return host.next_probe_at is None or host.next_probe_at.timestamp() <= now


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
