"""The webhook half of LocalStore: endpoints, and the outbox of deliveries (Convex module
webhooks).

`emit_event` is called by the job, stage, export and container job operations inside their
own transaction, so an event is written exactly when the change that causes it commits: one
`webhook_deliveries` row per active endpoint that wants it. Workers claim due rows under a
lease (`due_at` is the next attempt of a pending row and the lease expiry of a delivering
one, so one partial index serves both) and report each attempt.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from src.services.domain.webhooks import (
    MAX_DELIVERY_PAGE,
    MAX_ENDPOINTS_PER_USER,
    MAX_ERROR_CHARS,
    AttemptResult,
    ClaimedDelivery,
    DeliveryRules,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
    event_body,
    iso_time,
)
from src.services.errors import Conflict, NotFound

T = TypeVar("T")

WEBHOOK_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    all_users INTEGER NOT NULL DEFAULT 0,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    secret TEXT NOT NULL,
    status TEXT NOT NULL,
    disabled_reason TEXT,
    failing_since REAL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_endpoints_by_user ON webhook_endpoints(user_id, created_at);
CREATE INDEX IF NOT EXISTS webhook_endpoints_for_all_users ON webhook_endpoints(all_users)
    WHERE all_users = 1;
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    endpoint_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at REAL,
    lease_owner TEXT,
    last_status_code INTEGER,
    last_error TEXT,
    last_attempt_at REAL,
    delivered_at REAL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries(due_at)
    WHERE status IN ('pending', 'delivering');
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_endpoint
    ON webhook_deliveries(endpoint_id, seq);
"""

OPEN_SQL = "status IN ('pending', 'delivering')"
#: Rows a claim looks at past the ones it takes (given up, or of a disabled endpoint).
CLAIM_SCAN = 200


def emit_event(
    conn: sqlite3.Connection, now: float, event_type: str, user_id: str | None, data: Any
) -> int:
    """Write `event_type` for every active endpoint of `user_id` (and every endpoint for all
    users) that wants it, in the caller's transaction; returns how many deliveries."""
    rows = conn.execute(
        "SELECT id, events FROM webhook_endpoints WHERE status = 'active'"
        " AND (user_id = ? OR all_users = 1)",
        (user_id,),
    ).fetchall()
    targets = [row[0] for row in rows if event_type in orjson.loads(row[1])]
    if not targets:
        return 0
    body = orjson.dumps(event_body(event_type, now, data)).decode()
    conn.executemany(
        "INSERT INTO webhook_deliveries (id, endpoint_id, event_type, body, status, due_at,"
        " created_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
        [(f"msg_{uuid.uuid4().hex}", target, event_type, body, now, now) for target in targets],
    )
    return len(targets)


def _endpoint(row: sqlite3.Row) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=row["id"],
        user_id=row["user_id"],
        url=row["url"],
        events=tuple(orjson.loads(row["events"])),
        secret=row["secret"],
        created_at=row["created_at"],
        description=row["description"],
        all_users=bool(row["all_users"]),
        status=row["status"],
        disabled_reason=row["disabled_reason"],
        failing_since=row["failing_since"],
    )


def _delivery(row: sqlite3.Row) -> WebhookDelivery:
    return WebhookDelivery(
        id=row["id"],
        endpoint_id=row["endpoint_id"],
        event_type=row["event_type"],
        body=row["body"],
        status=row["status"],
        attempts=row["attempts"],
        created_at=row["created_at"],
        due_at=row["due_at"],
        lease_owner=row["lease_owner"],
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        last_attempt_at=row["last_attempt_at"],
        delivered_at=row["delivered_at"],
    )


def _cut(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g} h"


class LocalWebhookOps:
    """Mixed into LocalStore; `_run` (writes) and `_read` (reads) are LocalStore's."""

    _clock: Callable[[], float]

    if TYPE_CHECKING:  # LocalStore provides these two

        async def _run(self, fn: Callable[..., T], *args: Any) -> T: ...

        async def _read(self, fn: Callable[..., T], *args: Any) -> T: ...

    async def webhook_create(self, endpoint: WebhookEndpoint) -> None:
        await self._run(_create_endpoint, endpoint)

    async def webhook_get(self, endpoint_id: str) -> WebhookEndpoint | None:
        return await self._read(_get_endpoint, endpoint_id)

    async def webhook_list(self, user_id: str | None = None) -> list[WebhookEndpoint]:
        return await self._read(_list_endpoints, user_id)

    async def webhook_remove(self, endpoint_id: str) -> bool:
        return await self._run(_remove_endpoint, endpoint_id)

    async def webhook_enable(self, endpoint_id: str) -> WebhookEndpoint:
        return await self._run(_enable_endpoint, endpoint_id)

    async def webhook_claim(
        self, owner: str, lease_s: float, limit: int, rules: DeliveryRules
    ) -> list[ClaimedDelivery]:
        if limit < 1:
            return []
        return await self._run(
            self._webhook_claim, owner, lease_s, min(limit, MAX_DELIVERY_PAGE), rules
        )

    def _webhook_claim(
        self,
        conn: sqlite3.Connection,
        owner: str,
        lease_s: float,
        limit: int,
        rules: DeliveryRules,
    ) -> list[ClaimedDelivery]:
        now = self._clock()
        rows = conn.execute(
            "SELECT d.*, e.url, e.secret, e.status AS endpoint_status, e.disabled_reason"
            " FROM webhook_deliveries d LEFT JOIN webhook_endpoints e ON e.id = d.endpoint_id"
            f" WHERE d.{OPEN_SQL} AND d.due_at <= ? ORDER BY d.due_at LIMIT ?",
            (now, limit + CLAIM_SCAN),
        ).fetchall()
        claimed: list[ClaimedDelivery] = []
        for row in rows:
            if _settle_unclaimable(conn, row, now, rules) or len(claimed) >= limit:
                continue
            conn.execute(
                "UPDATE webhook_deliveries SET status = 'delivering', lease_owner = ?,"
                " due_at = ?, attempts = attempts + 1, last_attempt_at = ? WHERE seq = ?",
                (owner, now + lease_s, now, row["seq"]),
            )
            claimed.append(_claimed(row, owner, now, lease_s))
        return claimed

    async def webhook_heartbeat(
        self, delivery_id: str, owner: str, lease_s: float
    ) -> DeliveryStatus:
        return await self._run(self._webhook_heartbeat, delivery_id, owner, lease_s)

    def _webhook_heartbeat(
        self, conn: sqlite3.Connection, delivery_id: str, owner: str, lease_s: float
    ) -> DeliveryStatus:
        row = _delivery_row(conn, delivery_id)
        if row["status"] in ("delivered", "failed"):
            return row["status"]  # type: ignore[no-any-return]  # a DeliveryStatus column
        if row["status"] != "delivering" or row["lease_owner"] != owner:
            raise Conflict(f"lease on delivery {delivery_id} was lost to {row['lease_owner']!r}")
        conn.execute(
            "UPDATE webhook_deliveries SET due_at = ? WHERE seq = ?",
            (self._clock() + lease_s, row["seq"]),
        )
        return "delivering"

    async def webhook_report(
        self, delivery_id: str, owner: str, result: AttemptResult, rules: DeliveryRules
    ) -> DeliveryStatus:
        return await self._run(self._webhook_report, delivery_id, owner, result, rules)

    def _webhook_report(
        self,
        conn: sqlite3.Connection,
        delivery_id: str,
        owner: str,
        result: AttemptResult,
        rules: DeliveryRules,
    ) -> DeliveryStatus:
        row = _delivery_row(conn, delivery_id)
        status: DeliveryStatus = row["status"]
        if status in ("delivered", "failed"):
            return status
        # A success counts whoever sent it; a failure only from the holder of the lease (the
        # delivery is someone else's attempt now).
        if not result.ok and row["lease_owner"] != owner:
            return status
        now = self._clock()
        if result.ok:
            return _delivered(conn, row, result, now)
        return _attempt_failed(conn, row, result, rules, now)

    async def webhook_release(self, delivery_id: str, owner: str) -> None:
        await self._run(_release_delivery, delivery_id, owner, self._clock())

    async def webhook_deliveries(
        self, endpoint_id: str, status: DeliveryStatus | None = None, limit: int = 50
    ) -> list[WebhookDelivery]:
        limit = max(1, min(limit, MAX_DELIVERY_PAGE))
        return await self._read(_list_deliveries, endpoint_id, status, limit)


def _create_endpoint(conn: sqlite3.Connection, endpoint: WebhookEndpoint) -> None:
    count = conn.execute(
        "SELECT COUNT(*) FROM webhook_endpoints WHERE user_id = ?", (endpoint.user_id,)
    ).fetchone()[0]
    if count >= MAX_ENDPOINTS_PER_USER:
        raise Conflict(f"at most {MAX_ENDPOINTS_PER_USER} webhook endpoints per user")
    try:
        conn.execute(
            "INSERT INTO webhook_endpoints (id, user_id, all_users, url, events, description,"
            " secret, status, disabled_reason, failing_since, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                endpoint.id,
                endpoint.user_id,
                int(endpoint.all_users),
                endpoint.url,
                orjson.dumps(list(endpoint.events)).decode(),
                endpoint.description,
                endpoint.secret,
                endpoint.status,
                endpoint.disabled_reason,
                endpoint.failing_since,
                endpoint.created_at,
            ),
        )
    except sqlite3.IntegrityError:
        raise Conflict(f"webhook endpoint {endpoint.id} already exists") from None


def _get_endpoint(conn: sqlite3.Connection, endpoint_id: str) -> WebhookEndpoint | None:
    row = conn.execute("SELECT * FROM webhook_endpoints WHERE id = ?", (endpoint_id,)).fetchone()
    return None if row is None else _endpoint(row)


def _list_endpoints(conn: sqlite3.Connection, user_id: str | None) -> list[WebhookEndpoint]:
    rows = conn.execute(
        "SELECT * FROM webhook_endpoints WHERE (? IS NULL OR user_id = ?)"
        " ORDER BY created_at, id LIMIT ?",
        (user_id, user_id, MAX_DELIVERY_PAGE),
    ).fetchall()
    return [_endpoint(row) for row in rows]


def _remove_endpoint(conn: sqlite3.Connection, endpoint_id: str) -> bool:
    conn.execute("DELETE FROM webhook_deliveries WHERE endpoint_id = ?", (endpoint_id,))
    return conn.execute("DELETE FROM webhook_endpoints WHERE id = ?", (endpoint_id,)).rowcount > 0


def _enable_endpoint(conn: sqlite3.Connection, endpoint_id: str) -> WebhookEndpoint:
    conn.execute(
        "UPDATE webhook_endpoints SET status = 'active', disabled_reason = NULL,"
        " failing_since = NULL WHERE id = ?",
        (endpoint_id,),
    )
    endpoint = _get_endpoint(conn, endpoint_id)
    if endpoint is None:
        raise NotFound(f"webhook endpoint {endpoint_id} not found")
    return endpoint


def _delivery_row(conn: sqlite3.Connection, delivery_id: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute(
        "SELECT d.*, e.failing_since FROM webhook_deliveries d"
        " LEFT JOIN webhook_endpoints e ON e.id = d.endpoint_id WHERE d.id = ?",
        (delivery_id,),
    ).fetchone()
    if row is None:
        raise NotFound(f"webhook delivery {delivery_id} not found")
    return row


def _settle_unclaimable(
    conn: sqlite3.Connection, row: sqlite3.Row, now: float, rules: DeliveryRules
) -> bool:
    """Finish a due delivery that must not be sent again: its endpoint is gone (the row
    goes too), disabled, or its retry window has passed. True when it was one of those."""
    if row["endpoint_status"] is None:
        conn.execute("DELETE FROM webhook_deliveries WHERE seq = ?", (row["seq"],))
        return True
    if row["endpoint_status"] == "disabled":
        _fail_delivery(conn, row["seq"], f"endpoint disabled: {row['disabled_reason']}")
        return True
    if now >= row["created_at"] + rules.retry_window_s:
        _fail_delivery(conn, row["seq"], _gave_up(row, rules))
        return True
    return False


def _gave_up(row: sqlite3.Row, rules: DeliveryRules, last_error: str | None = None) -> str:
    error = last_error or row["last_error"] or "its worker stopped before reporting"
    return (
        f"not delivered within {_hours(rules.retry_window_s)} of the event"
        f" ({row['attempts']} attempts); last error: {error}"
    )


def _fail_delivery(
    conn: sqlite3.Connection, seq: int, error: str, status_code: int | None = None
) -> None:
    conn.execute(
        "UPDATE webhook_deliveries SET status = 'failed', due_at = NULL, lease_owner = NULL,"
        " last_error = ?, last_status_code = COALESCE(?, last_status_code) WHERE seq = ?",
        (_cut(error), status_code, seq),
    )


def _claimed(row: sqlite3.Row, owner: str, now: float, lease_s: float) -> ClaimedDelivery:
    delivery = _delivery(row)
    return ClaimedDelivery(
        delivery=WebhookDelivery(
            id=delivery.id,
            endpoint_id=delivery.endpoint_id,
            event_type=delivery.event_type,
            body=delivery.body,
            status="delivering",
            attempts=delivery.attempts + 1,
            created_at=delivery.created_at,
            due_at=now + lease_s,
            lease_owner=owner,
            last_status_code=delivery.last_status_code,
            last_error=delivery.last_error,
            last_attempt_at=now,
        ),
        url=row["url"],
        secret=row["secret"],
    )


def _delivered(
    conn: sqlite3.Connection, row: sqlite3.Row, result: AttemptResult, now: float
) -> DeliveryStatus:
    conn.execute(
        "UPDATE webhook_deliveries SET status = 'delivered', due_at = NULL, lease_owner = NULL,"
        " last_status_code = ?, last_error = NULL, delivered_at = ? WHERE seq = ?",
        (result.status_code, now, row["seq"]),
    )
    conn.execute(
        "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = ?", (row["endpoint_id"],)
    )
    return "delivered"


def _attempt_failed(
    conn: sqlite3.Connection,
    row: sqlite3.Row,
    result: AttemptResult,
    rules: DeliveryRules,
    now: float,
) -> DeliveryStatus:
    """Retry later, or fail for good: the receiver is gone (410), its endpoint has failed for
    too long (then it is disabled), or the next attempt would fall past the retry window."""
    error = _cut(result.error or f"HTTP {result.status_code}")
    failing_since = row["failing_since"] if row["failing_since"] is not None else now
    reason = _disable_reason(result, rules, now, failing_since, error)
    conn.execute(
        "UPDATE webhook_endpoints SET failing_since = ?,"
        " status = CASE WHEN ? IS NULL THEN status ELSE 'disabled' END,"
        " disabled_reason = COALESCE(?, disabled_reason) WHERE id = ?",
        (failing_since, reason, reason, row["endpoint_id"]),
    )
    if reason is not None:
        _fail_delivery(conn, row["seq"], f"endpoint disabled: {reason}", result.status_code)
        return "failed"
    if now + result.retry_in_s >= row["created_at"] + rules.retry_window_s:
        _fail_delivery(conn, row["seq"], _gave_up(row, rules, error), result.status_code)
        return "failed"
    conn.execute(
        "UPDATE webhook_deliveries SET status = 'pending', due_at = ?, lease_owner = NULL,"
        " last_status_code = ?, last_error = ? WHERE seq = ?",
        (now + max(0.0, result.retry_in_s), result.status_code, error, row["seq"]),
    )
    return "pending"


def _disable_reason(
    result: AttemptResult, rules: DeliveryRules, now: float, failing_since: float, error: str
) -> str | None:
    if result.gone:
        return "the receiver answered 410 Gone"
    if now - failing_since >= rules.disable_after_s:
        return (
            f"every delivery failed for {_hours(rules.disable_after_s)}"
            f" (since {iso_time(failing_since)}); last error: {error}"
        )
    return None


def _release_delivery(conn: sqlite3.Connection, delivery_id: str, owner: str, now: float) -> None:
    # A hand-back (the worker stopped on purpose) is not an attempt.
    conn.execute(
        "UPDATE webhook_deliveries SET status = 'pending', due_at = ?, lease_owner = NULL,"
        " attempts = MAX(0, attempts - 1) WHERE id = ? AND lease_owner = ?"
        " AND status = 'delivering'",
        (now, delivery_id, owner),
    )


def _list_deliveries(
    conn: sqlite3.Connection, endpoint_id: str, status: DeliveryStatus | None, limit: int
) -> list[WebhookDelivery]:
    rows = conn.execute(
        "SELECT * FROM webhook_deliveries WHERE endpoint_id = ? AND (? IS NULL OR status = ?)"
        " ORDER BY seq DESC LIMIT ?",
        (endpoint_id, status, status, limit),
    ).fetchall()
    return [_delivery(row) for row in rows]
