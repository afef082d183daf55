"""Request hardening as plain ASGI middleware (no per-request task, streaming untouched).

- A body larger than BULKJOBS_MAX_BODY_BYTES is refused with 413 naming the setting: at once
  when Content-Length says so, or as soon as a chunked body passes the limit.
- Every response gets nosniff, no-referrer and frame-denial headers; pages also get a strict
  Content-Security-Policy (scripts and styles from this origin only). The interactive API
  docs (Swagger UI and ReDoc, served from this origin too) start with an inline script and
  style themselves inline, so their pages also allow inline code, and nothing from elsewhere.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
PAGE_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    b" connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none';"
    b" form-action 'self'"
)
DOCS_CSP = (
    b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline';"
    b" img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; object-src 'none';"
    b" base-uri 'none'; frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/redoc")


class BodyTooLarge(BaseException):
    """Raised from `receive`. A BaseException because FastAPI turns any Exception raised
    while it reads a body into a generic 400, which would hide the limit."""


class HardeningMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._refuse(send)
            return
        csp = DOCS_CSP if scope["path"].startswith(DOCS_PATHS) else PAGE_CSP
        secured = _SecuredSend(send, csp)
        try:
            await self.app(scope, _LimitedReceive(receive, self.max_body_bytes), secured)
        except BodyTooLarge:
            if not secured.started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        limit = self.max_body_bytes
        body = orjson.dumps(
            {
                "detail": f"request body exceeds BULKJOBS_MAX_BODY_BYTES ({limit} bytes)",
                "error": "RequestTooLarge",
                "limit_bytes": limit,
            }
        )
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *COMMON_HEADERS,
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _LimitedReceive:
    def __init__(self, receive: Receive, limit: int) -> None:
        self.receive, self.limit, self.received = receive, limit, 0

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                raise BodyTooLarge
        return message


class _SecuredSend:
    def __init__(self, send: Send, csp: bytes) -> None:
        self.send, self.csp, self.started = send, csp, False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            headers = [*message.get("headers", []), *COMMON_HEADERS]
            if _is_html(headers):
                headers.append((b"content-security-policy", self.csp))
            message = {**message, "headers": headers}
        await self.send(message)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _is_html(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(
        name == b"content-type" and value.startswith(b"text/html") for name, value in headers
    )
