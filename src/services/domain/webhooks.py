"""Values of the webhook store operations (`webhooks:*` in Convex, `webhook_*` in Python).

An endpoint is a URL a user registered for some event types. When a job, stage, export or
container job changes in a way one of those names, the store writes one delivery per
matching endpoint in the same transaction as the change (the outbox): `pending`, claimed
`delivering` under a lease by a worker, then `delivered`, or back to `pending` after a
failed attempt, or `failed` once its retry window is spent. Times are seconds since the
epoch on the store's clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

EVENT_TYPES: tuple[str, ...] = (
    "job.created",
    "job.stage_completed",
    "job.stage_failed",
    "job.completed",
    "job.failed",
    "job.cancelled",
    "export.ready",
    "container_job.completed",
    "container_job.failed",
)
#: Bulk job statuses that end a job, and the event each sends.
JOB_END_EVENTS = {
    "completed": "job.completed",
    "failed": "job.failed",
    "cancelled": "job.cancelled",
}
#: Container job statuses that send an event (a timeout is a failure to the receiver).
CONTAINER_END_EVENTS = {
    "completed": "container_job.completed",
    "failed": "container_job.failed",
    "timeout": "container_job.failed",
}

EndpointStatus = Literal["active", "disabled"]
DeliveryStatus = Literal["pending", "delivering", "delivered", "failed"]
DELIVERY_STATUSES: tuple[DeliveryStatus, ...] = ("pending", "delivering", "delivered", "failed")
#: Most endpoints one user may register (each event is written once per endpoint).
MAX_ENDPOINTS_PER_USER = 20
#: Most deliveries a claim or a listing returns.
MAX_DELIVERY_PAGE = 200
#: Longest error text a delivery keeps.
MAX_ERROR_CHARS = 1000


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    id: str
    user_id: str
    url: str
    events: tuple[str, ...]
    #: `whsec_<base64>`: the HMAC key, shown to its owner once, when it is created.
    secret: str
    created_at: float
    description: str = ""
    #: Receives the events of every user's jobs (admins only), not just its owner's.
    all_users: bool = False
    status: EndpointStatus = "active"
    #: Why it was disabled (it failed for a day, or answered 410 Gone).
    disabled_reason: str | None = None
    #: When its current run of failed attempts began; None after a success.
    failing_since: float | None = None


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    #: The `webhook-id` header: the same on every attempt of this delivery.
    id: str
    endpoint_id: str
    event_type: str
    #: The exact body sent (and signed), JSON text.
    body: str
    status: DeliveryStatus
    attempts: int
    created_at: float
    #: When it is due: the next attempt (pending) or the lease's expiry (delivering).
    due_at: float | None = None
    lease_owner: str | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    last_attempt_at: float | None = None
    delivered_at: float | None = None


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery claimed under a lease, with what sending it needs."""

    delivery: WebhookDelivery
    url: str
    secret: str


@dataclass(frozen=True, slots=True)
class DeliveryRules:
    """How long deliveries to a failing receiver keep being retried."""

    #: Seconds after its event a delivery is retried; then it fails for good.
    retry_window_s: float = 24 * 3600
    #: Seconds an endpoint may fail without one success before it is disabled.
    disable_after_s: float = 24 * 3600


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt of a claimed delivery came to."""

    ok: bool
    status_code: int | None = None
    error: str | None = None
    #: Seconds before the next attempt, when it failed (the back-off, or the Retry-After).
    retry_in_s: float = 0.0
    #: The receiver answered 410 Gone: it wants no more; the endpoint is disabled.
    gone: bool = False


def iso_time(epoch_s: float) -> str:
    """A time as JavaScript's toISOString writes it (milliseconds, `Z`), so that payloads
    read the same from either store."""
    moment = datetime.fromtimestamp(epoch_s, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def event_body(event_type: str, epoch_s: float, data: dict[str, Any]) -> dict[str, Any]:
    """The payload of an event, shaped as the Standard Webhooks specification suggests:
    a thin `data` naming the job (or export, or container job) and what happened to it."""
    return {"type": event_type, "timestamp": iso_time(epoch_s), "data": data}
