"""The official Python client (PyPI `convex`, its legacy `ConvexHttpClient` in
`convex/http_client.py`) as a second reference client for the test Convex server.

What it does, read from its code and shown by these tests:
- it posts `{"path", "format": "convex_encoded_json", "args": <object>}` with `requests`,
  blocking the calling thread;
- a success decodes as the backend writes it: every plain number is a float (`0.0`), int64 a
  `ConvexInt64` (ConvexStore reads integral float64s as ints instead, see `decode`);
- a function's error answered with 200 (what the open-source backend sends) raises
  `convex.ConvexError` carrying the errorData;
- the hosted backend's 560 for the very same body goes to `raise_for_status()` first, whose
  handler reads `response["code"]`, a field only the `{code, message}` errors have: the caller
  gets a `KeyError('code')` chained to requests' "560 Server Error". The server is not bent to
  this: it answers as the hosted backend does and as convex-js expects (see
  tests/convex-server/conformance.test.ts);
- a `{code, message}` error is a bare `Exception("401 BadAdminKey: ...")`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import requests
from convex import ConvexError
from convex.http_client import ConvexHttpClient

from src.services.errors import NotFound
from src.services.store.convex import ConvexStore
from tests.convex_server import ConvexTestServer
from tests.loopback_http import QuietHandler

NEW_JOB = {
    "jobType": "demo",
    "userId": "u1",
    "jobData": {"n": 1, "ratio": 0.5},
    "stages": ["initialization", "content_fetch"],
    "priority": "normal",
    "maxJobs": 5,
    "windowMs": 3_600_000,
    "jobId": "py-client-job",
}
MISSING_STAGE = {"jobId": "missing", "stage": "initialization"}


@pytest.fixture
def server(convex_server: ConvexTestServer) -> ConvexTestServer:
    convex_server.reset()
    return convex_server


def official(url: str, admin_key: str | None) -> ConvexHttpClient:
    client = ConvexHttpClient(url)
    if admin_key is not None:
        client.set_admin_auth(admin_key)
    return client


def numbers(value: Any) -> set[type]:
    """The Python types of every number in a value."""
    if isinstance(value, dict):
        return set().union(*(numbers(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(numbers(item) for item in value))
    return (
        {type(value)} if isinstance(value, int | float) and not isinstance(value, bool) else set()
    )


async def test_success_reads_as_convex_store_reads_it_with_floats(server: ConvexTestServer) -> None:
    client = official(server.url, server.admin_key)
    assert await asyncio.to_thread(client.mutation, "bulkJobs:create", NEW_JOB) == NEW_JOB["jobId"]
    args = {"jobId": NEW_JOB["jobId"]}
    theirs = await asyncio.to_thread(client.query, "bulkJobs:getJobInternal", args)
    async with ConvexStore(server.url, server.admin_key) as store:
        ours = await store._call("query", "bulkJobs:getJobInternal", args)
    assert theirs == ours  # equal values: 1.0 == 1
    assert theirs["jobData"] == {"n": 1.0, "ratio": 0.5}
    assert numbers(theirs) == {float}
    assert numbers(ours) == {int, float}  # counts, indexes and `n` come back as ints
    assert await asyncio.to_thread(client.query, "apiTokens:count") == 0.0


def test_a_560_convex_error_reaches_it_as_a_key_error(server: ConvexTestServer) -> None:
    client = official(server.url, server.admin_key)
    with pytest.raises(KeyError, match="code") as caught:
        client.mutation("bulkJobs:startStage", MISSING_STAGE)
    http_error = caught.value.__context__
    assert isinstance(http_error, requests.HTTPError)
    assert http_error.response is not None and http_error.response.status_code == 560
    assert http_error.response.json()["errorData"] == {
        "code": "NOT_FOUND",
        "message": "job missing not found",
    }


async def test_convex_store_reads_the_same_560_as_not_found(server: ConvexTestServer) -> None:
    async with ConvexStore(server.url, server.admin_key) as store:
        with pytest.raises(NotFound, match="job missing not found"):
            await store.start_stage("missing", "initialization")


def test_the_same_error_body_with_200_is_a_convex_error(server: ConvexTestServer) -> None:
    with relay_as_open_source_backend(server.url) as url:
        client = official(url, server.admin_key)
        with pytest.raises(ConvexError) as caught:
            client.mutation("bulkJobs:startStage", MISSING_STAGE)
    assert caught.value.data == {"code": "NOT_FOUND", "message": "job missing not found"}


def test_an_internal_function_without_the_admin_key(server: ConvexTestServer) -> None:
    with pytest.raises(KeyError, match="code"):
        official(server.url, None).query("bulkJobs:getJobInternal", {"jobId": "x"})
    with relay_as_open_source_backend(server.url) as url, pytest.raises(Exception) as caught:
        official(url, None).query("bulkJobs:getJobInternal", {"jobId": "x"})
    assert str(caught.value) == "Could not find public function for 'bulkJobs:getJobInternal'."


def test_a_wrong_admin_key_is_a_bare_exception(server: ConvexTestServer) -> None:
    with pytest.raises(Exception, match=r"^401 BadAdminKey: The provided admin key"):
        official(server.url, "not-the-key").query("apiTokens:count")


class _Relay(QuietHandler):
    """Forwards to the test server and answers a 560 as 200, body unchanged."""

    upstream = ""

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        headers = {key: value for key, value in self.headers.items() if key.lower() != "host"}
        forwarded = httpx.post(
            self.upstream + self.path, content=self.rfile.read(length), headers=headers, timeout=10
        )
        status = 200 if forwarded.status_code == 560 else forwarded.status_code
        self.reply(status, forwarded.content, "application/json")


@contextmanager
def relay_as_open_source_backend(upstream: str) -> Iterator[str]:
    """A loopback relay in front of the test server answering function errors with 200, as
    get-convex/convex-backend's public_api.rs does (the hosted backend answers 560)."""
    handler = type("Relay", (_Relay,), {"upstream": upstream})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
