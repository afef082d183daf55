"""ConvexStore at the edges of the HTTP API, with respx standing in for the deployment."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator

import httpx
import pytest
import respx

from src.services.errors import (
    Conflict,
    NotFound,
    RateLimited,
    StoreAuthError,
    StoreError,
    StoreMisconfigured,
    StoreUnavailable,
)
from src.services.store.convex import ConvexStore, decode

URL = "https://happy-otter-123.convex.cloud"
QUERY = f"{URL}/api/query"


def ok(value: object) -> httpx.Response:
    return httpx.Response(200, json={"status": "success", "value": value, "logLines": []})


@pytest.fixture
async def store() -> AsyncIterator[ConvexStore]:
    convex = ConvexStore(URL, "prod:secret-key", retries=3)
    # No real sleeping between retries in these tests.
    import src.services.store.convex as module

    original = module._backoff
    module._backoff = lambda attempt: 0.0  # type: ignore[assignment]
    yield convex
    module._backoff = original
    await convex.aclose()


@respx.mock
async def test_sends_path_args_format_and_deploy_key(store: ConvexStore) -> None:
    route = respx.post(QUERY).mock(return_value=ok(3))
    assert await store.count_tokens() == 3
    request = route.calls.last.request
    assert request.headers["authorization"] == "Convex prod:secret-key"
    assert request.read() == b'{"path":"apiTokens:count","args":{},"format":"json"}'


@respx.mock
async def test_optional_arguments_are_left_out(store: ConvexStore) -> None:
    route = respx.post(f"{URL}/api/mutation").mock(return_value=ok(None))
    await store.start_stage("j1", "content_fetch")
    assert b"itemsTotal" not in route.calls.last.request.read()


@respx.mock
async def test_401_is_an_auth_error_not_retried(store: ConvexStore) -> None:
    route = respx.post(QUERY).mock(return_value=httpx.Response(401, json={"code": "BadDeployKey"}))
    with pytest.raises(StoreAuthError, match="CONVEX_DEPLOY_KEY"):
        await store.count_tokens()
    assert route.call_count == 1


@respx.mock
async def test_429_honours_retry_after_then_succeeds(
    store: ConvexStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("src.services.store.convex.asyncio.sleep", fake_sleep)
    respx.post(QUERY).mock(side_effect=[httpx.Response(429, headers={"Retry-After": "2"}), ok(1)])
    assert await store.count_tokens() == 1
    assert slept == [2.0]


@respx.mock
async def test_503_then_success(store: ConvexStore) -> None:
    respx.post(QUERY).mock(side_effect=[httpx.Response(503), httpx.Response(502), ok(7)])
    assert await store.count_tokens() == 7


@respx.mock
async def test_503_forever_is_store_unavailable(store: ConvexStore) -> None:
    route = respx.post(QUERY).mock(return_value=httpx.Response(503))
    with pytest.raises(StoreUnavailable, match="HTTP 503"):
        await store.count_tokens()
    assert route.call_count == 4


@respx.mock
async def test_connection_refused_is_retried_then_unavailable(store: ConvexStore) -> None:
    respx.post(QUERY).mock(side_effect=httpx.ConnectError("connection refused"))
    with pytest.raises(StoreUnavailable, match="ConnectError"):
        await store.count_tokens()


async def test_real_connection_refused() -> None:
    convex = ConvexStore("http://127.0.0.1:9", retries=0)
    with pytest.raises(StoreUnavailable):
        await convex.count_tokens()
    await convex.aclose()


@respx.mock
async def test_malformed_json(store: ConvexStore) -> None:
    respx.post(QUERY).mock(return_value=httpx.Response(200, content=b"<html>oops"))
    with pytest.raises(StoreUnavailable, match="not JSON"):
        await store.count_tokens()


@respx.mock
async def test_error_without_error_data(store: ConvexStore) -> None:
    respx.post(QUERY).mock(
        return_value=httpx.Response(
            200, json={"status": "error", "errorMessage": "[Request ID: x] Server Error"}
        )
    )
    with pytest.raises(StoreError, match="Server Error") as caught:
        await store.count_tokens()
    assert not isinstance(caught.value, StoreUnavailable)


@respx.mock
async def test_missing_function_is_a_hard_error(store: ConvexStore) -> None:
    message = "Could not find public function for 'apiTokens:count'. Did you forget to run..."
    respx.post(QUERY).mock(
        return_value=httpx.Response(200, json={"status": "error", "errorMessage": message})
    )
    with pytest.raises(StoreMisconfigured, match="npx convex deploy"):
        await store.count_tokens()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"code": "NOT_FOUND", "message": "job x not found"}, NotFound),
        ({"code": "CONFLICT", "message": "bad move"}, Conflict),
        ({"code": "RATE_LIMITED", "message": "slow down", "retryAfterS": 42}, RateLimited),
    ],
)
@respx.mock
async def test_convex_error_data_maps_to_our_errors(
    store: ConvexStore, data: dict[str, object], error: type[Exception]
) -> None:
    respx.post(f"{URL}/api/mutation").mock(
        return_value=httpx.Response(
            200, json={"status": "error", "errorMessage": "Uncaught ConvexError", "errorData": data}
        )
    )
    with pytest.raises(error) as caught:
        await store.release("j", "w")
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after_s == 42


def test_decode_convex_json_values() -> None:
    big = base64.b64encode((2**60).to_bytes(8, "little", signed=True)).decode()
    nan = base64.b64encode(struct.pack("<d", float("inf"))).decode()
    value = decode({"n": {"$integer": big}, "f": {"$float": nan}, "l": [1, 2.5, {"x": 3}]})
    assert value == {"n": 2**60, "f": float("inf"), "l": [1, 2.5, {"x": 3}]}
