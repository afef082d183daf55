"""A webhook receiver on 127.0.0.1 for the tests: it verifies every request with the
Standard Webhooks reference library (`standardwebhooks` from PyPI), records it, and answers
what the test scripts (500 first, hold the request open, ...)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.convex_server import free_port


@dataclass(frozen=True)
class Received:
    webhook_id: str
    timestamp: str
    body: str
    #: The payload as the reference library returned it after verifying the signature;
    #: None when verification failed.
    payload: Any


#: Answers a request: (request, how many times this webhook-id was seen, this one included)
#: -> HTTP status.
Script = Callable[[Received, int], int]


def always_ok(request: Received, seen: int) -> int:
    return 200


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    #: Many workers' requests at once must not be refused at the socket (the default is 5).
    request_queue_size = 128


@dataclass
class Receiver:
    port: int = field(default_factory=free_port)
    secret: str = ""
    script: Script = always_ok
    #: While set, requests are held open until it is cleared (a slow receiver).
    holding: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    received: list[Received] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    _server: _Server | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length).decode()
                status = receiver.take(dict(self.headers.items()), body)
                if receiver.holding.is_set():
                    receiver.released.wait(timeout=30)
                try:
                    self.send_response(status)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender is gone (the test killed it)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def take(self, headers: dict[str, str], body: str) -> int:
        lowered = {key.lower(): value for key, value in headers.items()}
        try:
            payload = Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError:
            payload = None
        request = Received(
            lowered.get("webhook-id", ""), lowered.get("webhook-timestamp", ""), body, payload
        )
        with self._lock:
            self.received.append(request)
            seen = sum(1 for r in self.received if r.webhook_id == request.webhook_id)
        self.arrived.set()
        return 400 if payload is None else self.script(request, seen)

    def stop(self) -> None:
        self.released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(request.webhook_id for request in self.received)

    def payloads(self) -> list[Any]:
        with self._lock:
            return [request.payload for request in self.received]


async def eventually(check: Callable[[], Awaitable[object]], timeout_s: float = 30) -> None:
    """Poll `check` (a store read, or a look at the receiver) until it holds."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("not there in time")
        await asyncio.sleep(0.02)


async def until(check: Callable[[], object], timeout_s: float = 30) -> None:
    """`eventually` for a plain check."""

    async def checked() -> object:
        return check()

    await eventually(checked, timeout_s)
