"""The work-item half of LocalStore: the `work_*` operations (Convex module workItems).

One row per item; `seq` keeps claim order. Each operation is one SQLite transaction, and a
claim, heartbeat or report handles a whole batch of items in it, which is what lets one
worker move thousands of items a second through an embedded file.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from src.services.domain.work import (
    MAX_WORK_BATCH,
    NewWorkItem,
    ReportAck,
    WorkItem,
    WorkReport,
)
from src.services.errors import Conflict, InvalidInput

T = TypeVar("T")

WORK_SCHEMA = """
CREATE TABLE IF NOT EXISTS work_items (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    operation TEXT NOT NULL,
    payload TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    lease_owner TEXT,
    lease_expires_at REAL,
    result TEXT,
    error TEXT,
    report_key TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    completed_at REAL
);
CREATE INDEX IF NOT EXISTS work_items_by_status_and_seq ON work_items(status, seq);
CREATE INDEX IF NOT EXISTS work_items_by_status_operation_seq
    ON work_items(status, operation, seq);
CREATE INDEX IF NOT EXISTS work_items_by_status_and_lease
    ON work_items(status, lease_expires_at);
CREATE INDEX IF NOT EXISTS work_items_by_owner ON work_items(lease_owner)
    WHERE lease_owner IS NOT NULL;
"""

FINISHED = ("completed", "failed")
#: Rows a claim looks at past the ones it takes, to skip other workers' operations.
CLAIM_SCAN = 1000


def _dumps(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value, default=str).decode()


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _check_batch(size: int) -> None:
    if size > MAX_WORK_BATCH:
        raise InvalidInput("items", f"at most {MAX_WORK_BATCH} work items per call")


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


def _item(row: sqlite3.Row) -> WorkItem:
    return WorkItem(
        id=row["id"],
        operation=row["operation"],
        payload=_loads(row["payload"]),
        status=row["status"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        created_at=row["created_at"],
        lease_owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
        result=_loads(row["result"]),
        error=row["error"],
        completed_at=row["completed_at"],
    )


class LocalWorkOps:
    """Mixed into LocalStore; `_run` (writes) and `_read` (reads) are LocalStore's."""

    _clock: Callable[[], float]

    if TYPE_CHECKING:  # LocalStore provides these two

        async def _run(self, fn: Callable[..., T], *args: Any) -> T: ...

        async def _read(self, fn: Callable[..., T], *args: Any) -> T: ...

    async def work_enqueue_batch(self, items: list[NewWorkItem]) -> list[str]:
        _check_batch(len(items))
        return await self._run(self._work_enqueue, items) if items else []

    def _work_enqueue(self, conn: sqlite3.Connection, items: list[NewWorkItem]) -> list[str]:
        now = self._clock()
        ids = [item.item_id or uuid.uuid4().hex for item in items]
        rows = [
            (item_id, item.operation, _dumps(item.payload), max(1, item.max_attempts), now, now)
            for item_id, item in zip(ids, items, strict=True)
        ]
        # An id already holding the same operation and payload is this batch sent again (a
        # retry after a lost reply): nothing to do. The same id with other content conflicts.
        for item_id, operation, payload, *_ in rows:
            found = conn.execute(
                "SELECT operation, payload FROM work_items WHERE id = ?", (item_id,)
            ).fetchone()
            if found is not None and (found[0], found[1]) != (operation, payload):
                raise Conflict(f"work item {item_id} exists with other content")
        conn.executemany(
            "INSERT OR IGNORE INTO work_items (id, operation, payload, status, max_attempts,"
            " created_at, updated_at) VALUES (?, ?, ?, 'pending', ?, ?, ?)",
            rows,
        )
        return ids

    async def work_claim(
        self, owner: str, operations: list[str] | None, limit: int, lease_s: float
    ) -> list[WorkItem]:
        if limit < 1 or operations == []:
            return []
        wanted = None if operations is None else frozenset(operations)
        return await self._run(self._work_claim, owner, wanted, min(limit, MAX_WORK_BATCH), lease_s)

    def _work_claim(
        self,
        conn: sqlite3.Connection,
        owner: str,
        wanted: frozenset[str] | None,
        limit: int,
        lease_s: float,
    ) -> list[WorkItem]:
        now = self._clock()
        rows = self._claimable(conn, wanted, limit, now)
        given_up = [row["seq"] for row in rows if row["attempts"] >= row["max_attempts"]]
        self._give_up(conn, given_up, now)
        chosen = [row for row in rows if row["attempts"] < row["max_attempts"]][:limit]
        expires = now + lease_s
        conn.executemany(
            "UPDATE work_items SET status = 'running', lease_owner = ?, lease_expires_at = ?,"
            " attempts = attempts + 1, updated_at = ? WHERE seq = ?",
            [(owner, expires, now, row["seq"]) for row in chosen],
        )
        return [_claimed(row, owner, expires) for row in chosen]

    def _claimable(
        self, conn: sqlite3.Connection, wanted: frozenset[str] | None, limit: int, now: float
    ) -> list[sqlite3.Row]:
        scan = limit if wanted is None else limit + CLAIM_SCAN
        found = self._pending(conn, wanted, limit)
        if len(found) >= limit:
            return found[:limit]
        expired = conn.execute(
            "SELECT * FROM work_items WHERE status = 'running' AND lease_expires_at < ?"
            " ORDER BY lease_expires_at LIMIT ?",
            (now, scan),
        ).fetchall()
        found += [row for row in expired if wanted is None or row["operation"] in wanted]
        return found

    @staticmethod
    def _pending(
        conn: sqlite3.Connection, wanted: frozenset[str] | None, limit: int
    ) -> list[sqlite3.Row]:
        """The oldest pending items of the wanted operations, filtered in the index: a
        backlog of other operations never hides them."""
        if wanted is None:
            sql = "SELECT * FROM work_items WHERE status = 'pending' ORDER BY seq LIMIT ?"
            return conn.execute(sql, (limit,)).fetchall()
        marks = ",".join("?" * len(wanted))
        sql = (
            f"SELECT * FROM work_items WHERE status = 'pending' AND operation IN ({marks})"
            " ORDER BY seq LIMIT ?"
        )
        return conn.execute(sql, (*sorted(wanted), limit)).fetchall()

    @staticmethod
    def _give_up(conn: sqlite3.Connection, seqs: list[int], now: float) -> None:
        conn.executemany(
            "UPDATE work_items SET status = 'failed', lease_owner = NULL, lease_expires_at = NULL,"
            " error = 'given up after ' || attempts || ' attempts: its workers stopped before"
            " reporting', completed_at = ?, updated_at = ? WHERE seq = ?",
            [(now, now, seq) for seq in seqs],
        )

    async def work_heartbeat(self, owner: str, item_ids: list[str], lease_s: float) -> list[str]:
        _check_batch(len(item_ids))
        if not item_ids:
            return []
        return await self._run(self._work_heartbeat, owner, item_ids, lease_s)

    def _work_heartbeat(
        self, conn: sqlite3.Connection, owner: str, item_ids: list[str], lease_s: float
    ) -> list[str]:
        now = self._clock()
        held = {
            row[0]
            for row in conn.execute(
                f"SELECT id FROM work_items WHERE id IN ({_marks(item_ids)})"  # placeholders
                " AND lease_owner = ? AND status = 'running'",
                (*item_ids, owner),
            )
        }
        conn.executemany(
            "UPDATE work_items SET lease_expires_at = ?, updated_at = ? WHERE id = ?",
            [(now + lease_s, now, item_id) for item_id in held],
        )
        return [item_id for item_id in item_ids if item_id not in held]

    async def work_report(self, reports: list[WorkReport]) -> list[ReportAck]:
        _check_batch(len(reports))
        if not reports:
            return []
        return await self._run(self._work_report, reports)

    def _work_report(
        self, conn: sqlite3.Connection, reports: Iterable[WorkReport]
    ) -> list[ReportAck]:
        now = self._clock()
        return [_apply_report(conn, report, now) for report in reports]

    async def work_release(self, owner: str, item_ids: list[str]) -> None:
        _check_batch(len(item_ids))
        if item_ids:
            await self._run(self._work_release, owner, item_ids)

    def _work_release(self, conn: sqlite3.Connection, owner: str, item_ids: list[str]) -> None:
        # A release is not a failed attempt: the worker stopped on purpose.
        conn.execute(
            "UPDATE work_items SET status = 'pending', lease_owner = NULL,"
            " lease_expires_at = NULL, attempts = MAX(0, attempts - 1), updated_at = ?"
            f" WHERE id IN ({_marks(item_ids)}) AND lease_owner = ?"  # placeholders
            " AND status = 'running'",
            (self._clock(), *item_ids, owner),
        )

    async def work_get(self, item_id: str) -> WorkItem | None:
        return await self._read(_work_get, item_id)

    async def work_count_by_status(self) -> dict[str, int]:
        return await self._read(_work_counts)

    async def work_list_leases(self, owner_prefix: str, limit: int = 100) -> list[WorkItem]:
        limit = max(1, min(limit, MAX_WORK_BATCH))
        return await self._read(_work_leases, owner_prefix, limit)


def _claimed(row: sqlite3.Row, owner: str, expires: float) -> WorkItem:
    item = _item(row)
    return WorkItem(
        id=item.id,
        operation=item.operation,
        payload=item.payload,
        status="running",
        attempts=item.attempts + 1,
        max_attempts=item.max_attempts,
        created_at=item.created_at,
        lease_owner=owner,
        lease_expires_at=expires,
    )


def _apply_report(conn: sqlite3.Connection, report: WorkReport, now: float) -> ReportAck:
    row = conn.execute(
        "SELECT seq, status, report_key FROM work_items WHERE id = ?", (report.item_id,)
    ).fetchone()
    if row is None:
        return ReportAck(report.key, "missing")
    if row["report_key"] == report.key:
        return ReportAck(report.key, "duplicate")
    if row["status"] in FINISHED:
        return ReportAck(report.key, "stale")
    conn.execute(
        "UPDATE work_items SET status = ?, result = ?, error = ?, report_key = ?,"
        " lease_owner = NULL, lease_expires_at = NULL, completed_at = ?, updated_at = ?"
        " WHERE seq = ?",
        (
            report.outcome,
            _dumps(report.result),
            report.error,
            report.key,
            now,
            now,
            row["seq"],
        ),
    )
    return ReportAck(report.key, "applied")


def _work_get(conn: sqlite3.Connection, item_id: str) -> WorkItem | None:
    row = conn.execute("SELECT * FROM work_items WHERE id = ?", (item_id,)).fetchone()
    return None if row is None else _item(row)


def _work_counts(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT status, COUNT(*) FROM work_items GROUP BY status")
    return {status: count for status, count in rows}


def _work_leases(conn: sqlite3.Connection, owner_prefix: str, limit: int) -> list[WorkItem]:
    escaped = owner_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    rows = conn.execute(
        "SELECT * FROM work_items WHERE lease_owner LIKE ? ESCAPE '\\' AND status = 'running'"
        " ORDER BY lease_expires_at LIMIT ?",
        (escaped + "%", limit),
    ).fetchall()
    return [_item(row) for row in rows]
