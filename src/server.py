"""The HTTP server behind `bulkjobs serve`: uvicorn, with bounds on slow and greedy clients.

uvicorn bounds idle keep-alive connections (`timeout_keep_alive`) and all connections
together (`limit_concurrency`, a 503 past it), but not how long a client may take to send a
request: a connection trickling its headers or its body stays open, one descriptor each,
for as long as the client likes (slowloris). Its protocol here adds, per connection:

- a header deadline (BULKJOBS_HEADER_TIMEOUT_S) from the connection's start, or from the
  first byte of each next request, until the headers are complete -- and a header size cap;
- a body deadline (BULKJOBS_BODY_TIMEOUT_S) from the end of the headers to the end of the
  body, whether or not the app reads it;
- a cap on open connections per client address (BULKJOBS_MAX_CONNECTIONS_PER_CLIENT).

Past a deadline the client gets a 408 (unless a response started) and the connection is
closed (a short lingering close, so that the answer is not lost); past the cap, a 503 at
once; headers over MAX_HEADER_BYTES, a 431.
"""

from __future__ import annotations

import asyncio
import http
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from src.config import Settings

MAX_HEADER_BYTES = 64 * 1024
#: Seconds a refused connection stays half-open, reading and dropping what the client still
#: sends, before it is closed for good.
LINGER_S = 2.0
#: Seconds an idle keep-alive connection stays open (uvicorn's own bound).
KEEP_ALIVE_S = 5


@dataclass(frozen=True)
class ClientLimits:
    header_timeout_s: float
    body_timeout_s: float
    per_client: int
    max_header_bytes: int = MAX_HEADER_BYTES


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.run / uvicorn.Config keyword arguments that bound every client."""
    limits = ClientLimits(
        settings.bulkjobs_header_timeout_s,
        settings.bulkjobs_body_timeout_s,
        settings.bulkjobs_max_connections_per_client,
    )
    return {
        "http": guarded_protocol(limits),
        "limit_concurrency": settings.bulkjobs_max_connections,
        "timeout_keep_alive": KEEP_ALIVE_S,
    }


def guarded_protocol(limits: ClientLimits) -> type[GuardedProtocol]:
    """The protocol class uvicorn instantiates per connection, carrying these limits."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits})


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines for headers and bodies and a cap per
    client; see the module docstring."""

    limits: ClassVar[ClientLimits]
    _deadline: asyncio.TimerHandle | None = None
    _in_headers = True
    _header_bytes = 0
    _lingering = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]  # uvicorn narrows it
        if self._connections_from_client() > self.limits.per_client:
            self._refuse(503, "too many connections from your address")
            return
        self._arm(self.limits.header_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the refusal is sent: what the client still sends is read and dropped
        if self._in_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._in_headers and self._header_bytes > self.limits.max_header_bytes:
            self._refuse(431, f"request headers exceed {self.limits.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_headers:  # the next request on a kept-alive connection
            self._in_headers, self._header_bytes = True, 0
            self._arm(self.limits.header_timeout_s)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._arm(self.limits.body_timeout_s)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _connections_from_client(self) -> int:
        """Open connections from this one's address, this one included."""
        address = self.client[0] if self.client else None
        return sum(1 for other in self.connections if _address(other) == address)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        phase = "headers" if self._in_headers else "body"
        setting = "BULKJOBS_HEADER_TIMEOUT_S" if self._in_headers else "BULKJOBS_BODY_TIMEOUT_S"
        self._refuse(408, f"the request {phase} took too long ({setting})")

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` unless a response already started, then close the connection."""
        self._disarm()
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            body = orjson.dumps({"detail": message, "error": http.HTTPStatus(status).phrase})
            head = (
                f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
                "content-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            self.transport.write(head.encode() + body)
            self._linger()
        else:
            self.transport.close()

    def _linger(self) -> None:
        """Close after the refusal without losing it. Closing a socket whose input was not
        all read sends a reset, and a reset can destroy the answer before the client reads
        it (a client still trickling its request never sees its 408). So: end our side
        (FIN after the answer), drop what still arrives, and close once the client closes
        or LINGER_S has passed. The app sees the request as disconnected at once."""
        self._lingering = True
        if self.cycle is not None:
            if not self.cycle.response_complete:
                self.cycle.disconnected = True
            self.cycle.message_event.set()
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


def _address(connection: object) -> str | None:
    client = getattr(connection, "client", None)
    return str(client[0]) if client else None
