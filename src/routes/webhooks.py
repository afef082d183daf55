"""HTTP routes for webhook endpoints: register one (its signing secret is answered once),
list, show, delete, re-enable, and see its deliveries. A user manages only their own
endpoints; an admin sees every one and may register one for all users' events."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from src.routes.deps import CurrentUser, Manager, owner_filter
from src.routes.validation import JsonRoute
from src.services.domain import to_datetime
from src.services.domain.webhooks import (
    EVENT_TYPES,
    MAX_DELIVERY_PAGE,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
)
from src.services.webhooks import MAX_URL_CHARS, WebhookService

router = APIRouter(route_class=JsonRoute, tags=["webhooks"])


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: http or https; where it may point is the fetch policy's business.
    url: str = Field(min_length=1, max_length=MAX_URL_CHARS)
    events: list[str] = Field(
        min_length=1,
        max_length=len(EVENT_TYPES),
        description=f"any of: {', '.join(EVENT_TYPES)}",
    )
    description: str = Field("", max_length=500)
    all_users: bool = Field(False, description="admins only: every user's events")


class WebhookPublic(BaseModel):
    id: str
    user_id: str
    url: str
    events: list[str]
    description: str
    all_users: bool
    status: Literal["active", "disabled"]
    disabled_reason: str | None
    #: When its current run of failed deliveries began (None once one succeeds).
    failing_since: datetime | None
    created_at: datetime


class WebhookCreated(WebhookPublic):
    #: The signing secret (`whsec_<base64>`): shown here only, keep it.
    secret: str


class DeliveryPublic(BaseModel):
    #: The `webhook-id` header, the same on every attempt.
    id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    #: The body sent, parsed.
    payload: Any


def endpoint_view(endpoint: WebhookEndpoint) -> WebhookPublic:
    return WebhookPublic(
        id=endpoint.id,
        user_id=endpoint.user_id,
        url=endpoint.url,
        events=list(endpoint.events),
        description=endpoint.description,
        all_users=endpoint.all_users,
        status=endpoint.status,
        disabled_reason=endpoint.disabled_reason,
        failing_since=to_datetime(endpoint.failing_since),
        created_at=to_datetime(endpoint.created_at),
    )


def delivery_view(delivery: WebhookDelivery) -> DeliveryPublic:
    return DeliveryPublic(
        id=delivery.id,
        event_type=delivery.event_type,
        status=delivery.status,
        attempts=delivery.attempts,
        created_at=to_datetime(delivery.created_at),
        next_attempt_at=to_datetime(delivery.due_at) if delivery.status == "pending" else None,
        last_attempt_at=to_datetime(delivery.last_attempt_at),
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        delivered_at=to_datetime(delivery.delivered_at),
        payload=orjson.loads(delivery.body),
    )


async def _service(manager: Manager) -> WebhookService:
    return WebhookService(await manager.store())


@router.post("/webhooks", status_code=201, response_model=WebhookCreated)
async def create_webhook(
    body: WebhookCreate, user: CurrentUser, manager: Manager
) -> WebhookCreated:
    """Register an endpoint for these events of your jobs; the answer holds its signing
    secret, which is not shown again. 422 names a bad `url` or `events`."""
    endpoint = await (await _service(manager)).create(
        user.user_id,
        body.url,
        body.events,
        body.description,
        all_users=body.all_users,
        is_admin=user.is_admin,
    )
    return WebhookCreated(**endpoint_view(endpoint).model_dump(), secret=endpoint.secret)


@router.get("/webhooks", response_model=list[WebhookPublic])
async def list_webhooks(user: CurrentUser, manager: Manager) -> list[WebhookPublic]:
    """Your endpoints (an admin's: everyone's), oldest first."""
    endpoints = await (await _service(manager)).list_endpoints(owner_filter(user))
    return [endpoint_view(endpoint) for endpoint in endpoints]


@router.get("/webhooks/{webhook_id}", response_model=WebhookPublic)
async def get_webhook(webhook_id: str, user: CurrentUser, manager: Manager) -> WebhookPublic:
    return endpoint_view(await (await _service(manager)).get(webhook_id, owner_filter(user)))


@router.delete("/webhooks/{webhook_id}", status_code=204)
async def delete_webhook(webhook_id: str, user: CurrentUser, manager: Manager) -> Response:
    """Remove the endpoint and its deliveries (undelivered ones are dropped)."""
    await (await _service(manager)).delete(webhook_id, owner_filter(user))
    return Response(status_code=204)


@router.post("/webhooks/{webhook_id}/enable", response_model=WebhookPublic)
async def enable_webhook(webhook_id: str, user: CurrentUser, manager: Manager) -> WebhookPublic:
    """Re-enable an endpoint that was disabled (its reason is cleared); deliveries not yet
    failed are sent again."""
    service = await _service(manager)
    return endpoint_view(await service.enable(webhook_id, owner_filter(user)))


@router.get("/webhooks/{webhook_id}/deliveries", response_model=list[DeliveryPublic])
async def list_deliveries(
    webhook_id: str,
    user: CurrentUser,
    manager: Manager,
    status: DeliveryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_DELIVERY_PAGE)] = 50,
) -> list[DeliveryPublic]:
    """The endpoint's deliveries, newest first: attempts, the last status code and error,
    and `failed` ones that gave up (past the retry window, or the endpoint disabled)."""
    service = await _service(manager)
    found = await service.deliveries(webhook_id, owner_filter(user), status, limit)
    return [delivery_view(delivery) for delivery in found]
