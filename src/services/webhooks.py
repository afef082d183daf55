"""Signed webhooks: endpoint registration, Standard Webhooks signatures, and the delivery of
one claimed delivery (the worker's `webhook_delivery` source claims them; see
src/services/worker/sources.py).

A delivery is a POST of the event's JSON body with the headers `webhook-id` (the same on
every attempt), `webhook-timestamp` (this attempt's) and `webhook-signature`
(`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the base64-decoded
secret), as https://www.standardwebhooks.com specifies and its reference libraries verify.
Requests go through the fetch policy, like every request made for a user; redirects are not
followed (the specification counts a 3xx as a failure).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import httpx

from src.services.backoff import backoff
from src.services.domain import new_id
from src.services.domain.webhooks import (
    EVENT_TYPES,
    MAX_ERROR_CHARS,
    AttemptResult,
    ClaimedDelivery,
    DeliveryRules,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
)
from src.services.errors import BulkJobError, InvalidInput, NotFound, PermissionDenied
from src.services.fetch_policy import SCHEMES, FetchPolicy, FetchRefused, fetch_client
from src.services.leases import LeaseWatch, run_under_lease
from src.services.store.base import Store, WebhookStore

if TYPE_CHECKING:
    from src.config import Settings

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
#: Random bytes of a signing secret (the specification asks for 24 to 64).
SECRET_BYTES = 32
USER_AGENT = "bulkjobs-webhooks/1"
#: Bytes of a receiver's answer read (the start is kept in the delivery's error).
MAX_ANSWER_BYTES = 1024
MAX_URL_CHARS = 2000
FINISHED: frozenset[str] = frozenset({"delivered", "failed"})


def new_secret() -> str:
    """A signing secret in the specification's serialization: `whsec_` + base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` header of one attempt: `v1,<base64 HMAC-SHA256>`."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.{body}".encode()
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, message_id: str, timestamp: int, body: str) -> dict[str, str]:
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }


def check_url(url: str) -> str:
    """A receiver URL: http or https with a host; InvalidInput naming `url` otherwise. Where
    it may point is the fetch policy's business, decided at each delivery."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise InvalidInput("url", f"not a URL: {exc}") from None
    if len(url) > MAX_URL_CHARS:
        raise InvalidInput("url", f"at most {MAX_URL_CHARS} characters")
    if parsed.scheme not in SCHEMES:
        raise InvalidInput("url", f"must be http or https, not {parsed.scheme or 'relative'}")
    if not parsed.host:
        raise InvalidInput("url", "has no host")
    return url


def check_events(events: list[str]) -> tuple[str, ...]:
    """The event types asked for, once each, in the order given; InvalidInput naming
    `events` for an empty list or an unknown type."""
    if not events:
        raise InvalidInput("events", f"name at least one of: {', '.join(EVENT_TYPES)}")
    unknown = [event for event in events if event not in EVENT_TYPES]
    if unknown:
        raise InvalidInput(
            "events", f"unknown event type {unknown[0]!r}; known: {', '.join(EVENT_TYPES)}"
        )
    return tuple(dict.fromkeys(events))


def rules_from(settings: Settings) -> DeliveryRules:
    return DeliveryRules(
        retry_window_s=settings.bulkjobs_webhook_retry_window_s,
        disable_after_s=settings.bulkjobs_webhook_disable_after_s,
    )


class WebhookService:
    """Endpoint management for the routes and the CLI. `owner` is the caller's user id, or
    None for an admin (who may act on every endpoint); another user's endpoint reads as
    missing."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def create(
        self,
        user_id: str,
        url: str,
        events: list[str],
        description: str = "",
        all_users: bool = False,
        is_admin: bool = False,
    ) -> WebhookEndpoint:
        """Register an endpoint; the returned one carries its secret (shown once)."""
        if all_users and not is_admin:
            raise PermissionDenied("only admins may register an endpoint for all users")
        endpoint = WebhookEndpoint(
            id=new_id(),
            user_id=user_id,
            url=check_url(url),
            events=check_events(events),
            secret=new_secret(),
            created_at=time.time(),
            description=description,
            all_users=all_users,
        )
        await self.store.webhook_create(endpoint)
        return endpoint

    async def list_endpoints(self, owner: str | None) -> list[WebhookEndpoint]:
        return await self.store.webhook_list(owner)

    async def get(self, endpoint_id: str, owner: str | None) -> WebhookEndpoint:
        endpoint = await self.store.webhook_get(endpoint_id)
        if endpoint is None or (owner is not None and endpoint.user_id != owner):
            raise NotFound(f"webhook endpoint {endpoint_id} not found")
        return endpoint

    async def delete(self, endpoint_id: str, owner: str | None) -> None:
        await self.get(endpoint_id, owner)
        await self.store.webhook_remove(endpoint_id)

    async def enable(self, endpoint_id: str, owner: str | None) -> WebhookEndpoint:
        await self.get(endpoint_id, owner)
        return await self.store.webhook_enable(endpoint_id)

    async def deliveries(
        self,
        endpoint_id: str,
        owner: str | None,
        status: DeliveryStatus | None = None,
        limit: int = 50,
    ) -> list[WebhookDelivery]:
        await self.get(endpoint_id, owner)
        return await self.store.webhook_deliveries(endpoint_id, status, limit)


@dataclass(frozen=True)
class RetrySchedule:
    """The back-off between attempts of one delivery (src/services/backoff.py's rule)."""

    base_s: float = 5.0
    cap_s: float = 3600.0

    def delay(self, attempts: int, retry_after_s: float | None = None) -> float:
        """Seconds before the attempt after attempt number `attempts`; a receiver's
        Retry-After is honoured up to the cap."""
        wait = backoff(max(0, attempts - 1), self.base_s, self.cap_s)
        return min(self.cap_s, max(wait, retry_after_s or 0.0))


class WebhookDeliverer:
    """Sends claimed deliveries, one attempt each, under their lease, and reports them."""

    def __init__(
        self,
        store: WebhookStore,
        policy: FetchPolicy,
        rules: DeliveryRules,
        schedule: RetrySchedule,
        timeout_s: float,
    ) -> None:
        self.store = store
        self.policy = policy
        self.rules = rules
        self.schedule = schedule
        self.timeout_s = timeout_s
        # One TLS context for every attempt: building one reads the CA bundle.
        self._tls = httpx.create_ssl_context()

    @classmethod
    def from_settings(cls, store: WebhookStore, settings: Settings) -> WebhookDeliverer:
        return cls(
            store,
            FetchPolicy.from_settings(settings),
            rules_from(settings),
            RetrySchedule(
                settings.bulkjobs_webhook_retry_base_s, settings.bulkjobs_webhook_retry_cap_s
            ),
            settings.bulkjobs_webhook_timeout_s,
        )

    async def deliver(self, claimed: ClaimedDelivery, owner: str, lease_s: float) -> None:
        """One attempt while the lease is renewed, then its report. A worker stopping hands
        the lease back; one that dies leaves it to expire: either way the delivery is sent
        again, with the same webhook-id."""
        delivery = claimed.delivery
        watch = LeaseWatch(
            renew=partial(self.store.webhook_heartbeat, delivery.id, owner, lease_s),
            interval_s=lease_s / 3,
            stop_on=FINISHED,
            label=f"webhook delivery {delivery.id}",
        )
        try:
            result = await run_under_lease(self.attempt(claimed), watch)
        except asyncio.CancelledError:
            await self._release(delivery.id, owner)
            raise
        if result is not None:  # None: the lease was lost, the delivery is another's now
            await self._report(delivery, owner, result)

    async def attempt(self, claimed: ClaimedDelivery) -> AttemptResult:
        """POST the signed body once; what came of it (never raises for the receiver's
        faults)."""
        delivery = claimed.delivery
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            **signed_headers(claimed.secret, delivery.id, int(time.time()), delivery.body),
        }
        try:
            async with (
                fetch_client(self.policy, self.timeout_s, verify=self._tls) as client,
                client.stream(
                    "POST",
                    claimed.url,
                    content=delivery.body.encode(),
                    headers=headers,
                    follow_redirects=False,
                ) as response,
            ):
                answer = await _read_some(response)
        except FetchRefused as exc:
            return self._failed(delivery, str(exc))
        except httpx.HTTPError as exc:
            return self._failed(delivery, f"{type(exc).__name__}: {exc}".rstrip(": "))
        return self._judge(delivery, response, answer)

    def _judge(
        self, delivery: WebhookDelivery, response: httpx.Response, answer: str
    ) -> AttemptResult:
        code = response.status_code
        if 200 <= code < 300:
            return AttemptResult(ok=True, status_code=code)
        error = f"HTTP {code}" + (f": {answer}" if answer else "")
        retry_after = _retry_after(response)
        return AttemptResult(
            ok=False,
            status_code=code,
            error=error[:MAX_ERROR_CHARS],
            retry_in_s=self.schedule.delay(delivery.attempts, retry_after),
            gone=code == 410,
        )

    def _failed(self, delivery: WebhookDelivery, error: str) -> AttemptResult:
        return AttemptResult(
            ok=False,
            error=error[:MAX_ERROR_CHARS],
            retry_in_s=self.schedule.delay(delivery.attempts),
        )

    async def _report(self, delivery: WebhookDelivery, owner: str, result: AttemptResult) -> None:
        try:
            status = await self.store.webhook_report(delivery.id, owner, result, self.rules)
        except NotFound:
            return  # its endpoint was removed meanwhile
        except BulkJobError as exc:
            log.warning(
                "could not report webhook delivery %s (%s); it is sent again once its lease"
                " expires",
                delivery.id,
                exc,
            )
            return
        if not result.ok:
            log.info(
                "webhook delivery %s (attempt %d) failed: %s; now %s",
                delivery.id,
                delivery.attempts,
                result.error,
                status,
            )

    async def _release(self, delivery_id: str, owner: str) -> None:
        try:
            await asyncio.shield(self.store.webhook_release(delivery_id, owner))
        except (BulkJobError, asyncio.CancelledError):
            log.warning(
                "could not hand back webhook delivery %s; its lease will expire", delivery_id
            )


async def _read_some(response: httpx.Response) -> str:
    """The start of the receiver's answer, for the delivery's error (a receiver cannot make
    the worker read a large body)."""
    kept = b""
    async for chunk in response.aiter_raw():
        kept += chunk
        if len(kept) >= MAX_ANSWER_BYTES:
            break
    return kept[:MAX_ANSWER_BYTES].decode("utf-8", "replace").strip()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: the back-off decides instead
