"""The webhook half of ConvexStore: the `webhook_*` operations over the webhooks Convex
functions. Times travel as epoch milliseconds and come back as epoch seconds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from src.services.domain.webhooks import (
    MAX_DELIVERY_PAGE,
    AttemptResult,
    ClaimedDelivery,
    DeliveryRules,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
)


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


def _endpoint(doc: dict[str, Any]) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=doc["endpointId"],
        user_id=doc["userId"],
        url=doc["url"],
        events=tuple(doc["events"]),
        secret=doc["secret"],
        created_at=doc["createdAt"] / 1000,
        description=doc["description"],
        all_users=doc["allUsers"],
        status=doc["status"],
        disabled_reason=doc.get("disabledReason"),
        failing_since=_seconds(doc.get("failingSince")),
    )


def _delivery(doc: dict[str, Any]) -> WebhookDelivery:
    return WebhookDelivery(
        id=doc["deliveryId"],
        endpoint_id=doc["endpointId"],
        event_type=doc["eventType"],
        body=doc["body"],
        status=doc["status"],
        attempts=doc["attempts"],
        created_at=doc["createdAt"] / 1000,
        due_at=_seconds(doc.get("dueAt")),
        lease_owner=doc.get("leaseOwner"),
        last_status_code=doc.get("lastStatusCode"),
        last_error=doc.get("lastError"),
        last_attempt_at=_seconds(doc.get("lastAttemptAt")),
        delivered_at=_seconds(doc.get("deliveredAt")),
    )


def _rules(rules: DeliveryRules) -> dict[str, float]:
    return {
        "retryWindowMs": rules.retry_window_s * 1000,
        "disableAfterMs": rules.disable_after_s * 1000,
    }


def _present(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


class ConvexWebhookOps:
    """Mixed into ConvexStore, whose `_call` sends one function call."""

    if TYPE_CHECKING:

        async def _call(
            self, kind: Literal["query", "mutation"], path: str, args: Mapping[str, Any]
        ) -> Any: ...

    async def webhook_create(self, endpoint: WebhookEndpoint) -> None:
        args = {
            "endpointId": endpoint.id,
            "userId": endpoint.user_id,
            "allUsers": endpoint.all_users,
            "url": endpoint.url,
            "events": list(endpoint.events),
            "description": endpoint.description,
            "secret": endpoint.secret,
            "status": endpoint.status,
            "disabledReason": endpoint.disabled_reason,
            "failingSince": None
            if endpoint.failing_since is None
            else endpoint.failing_since * 1000,
            "createdAt": endpoint.created_at * 1000,
        }
        await self._call("mutation", "webhooks:create", _present(args))

    async def webhook_get(self, endpoint_id: str) -> WebhookEndpoint | None:
        doc = await self._call("query", "webhooks:get", {"endpointId": endpoint_id})
        return None if doc is None else _endpoint(doc)

    async def webhook_list(self, user_id: str | None = None) -> list[WebhookEndpoint]:
        docs = await self._call("query", "webhooks:list", _present({"userId": user_id}))
        return [_endpoint(doc) for doc in docs]

    async def webhook_remove(self, endpoint_id: str) -> bool:
        return bool(await self._call("mutation", "webhooks:remove", {"endpointId": endpoint_id}))

    async def webhook_enable(self, endpoint_id: str) -> WebhookEndpoint:
        doc = await self._call("mutation", "webhooks:enable", {"endpointId": endpoint_id})
        return _endpoint(doc)

    async def webhook_claim(
        self, owner: str, lease_s: float, limit: int, rules: DeliveryRules
    ) -> list[ClaimedDelivery]:
        if limit < 1:
            return []
        args = {
            "owner": owner,
            "leaseMs": lease_s * 1000,
            "limit": min(limit, MAX_DELIVERY_PAGE),
        } | _rules(rules)
        claimed = await self._call("mutation", "webhooks:claim", args)
        return [
            ClaimedDelivery(_delivery(doc["delivery"]), url=doc["url"], secret=doc["secret"])
            for doc in claimed
        ]

    async def webhook_heartbeat(
        self, delivery_id: str, owner: str, lease_s: float
    ) -> DeliveryStatus:
        args = {"deliveryId": delivery_id, "owner": owner, "leaseMs": lease_s * 1000}
        status: DeliveryStatus = await self._call("mutation", "webhooks:heartbeat", args)
        return status

    async def webhook_report(
        self, delivery_id: str, owner: str, result: AttemptResult, rules: DeliveryRules
    ) -> DeliveryStatus:
        args = _present(
            {
                "deliveryId": delivery_id,
                "owner": owner,
                "ok": result.ok,
                "statusCode": result.status_code,
                "error": result.error,
                "retryInMs": result.retry_in_s * 1000,
                "gone": result.gone,
            }
        ) | _rules(rules)
        status: DeliveryStatus = await self._call("mutation", "webhooks:report", args)
        return status

    async def webhook_release(self, delivery_id: str, owner: str) -> None:
        args = {"deliveryId": delivery_id, "owner": owner}
        await self._call("mutation", "webhooks:release", args)

    async def webhook_deliveries(
        self, endpoint_id: str, status: DeliveryStatus | None = None, limit: int = 50
    ) -> list[WebhookDelivery]:
        args = _present(
            {
                "endpointId": endpoint_id,
                "status": status,
                "limit": max(1, min(limit, MAX_DELIVERY_PAGE)),
            }
        )
        docs = await self._call("query", "webhooks:listDeliveries", args)
        return [_delivery(doc) for doc in docs]
