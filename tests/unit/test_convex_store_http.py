"""ConvexStore's reading of every answer the Convex HTTP API gives, against recorded answers
(respx stands in for the deployment).

The fixtures below are the shapes ConvexStore relies on, each with where it comes from:

- get-convex/convex-backend `crates/local_backend/src/public_api.rs` (`UdfResponse`): a
  function's answer is `{"status": "success", "value", "logLines"?}` or `{"status": "error",
  "errorMessage", "errorData"?, "logLines"?}`, errorData only for a ConvexError. The
  open-source backend sends both with HTTP 200; the hosted one sends the error with 560
  (`STATUS_CODE_UDF_FAILED` in npm convex/browser `http_client.js`, "must match the constant
  of the same name in the backend"; the client reads 200 and 560 bodies alike).
- `crates/udf/src/validation.rs`: a missing function, or an internal one without the admin
  key, is that error body with "Could not find public function for '<path>'."; arguments
  that fail validation, with "ArgumentValidationError: ...". Behind the backend's
  UDF_404_ON_BAD_PATH knob a missing function is a 404 `FunctionPathNotFound` instead.
- `crates/common/src/http/mod.rs` (`HttpError` -> `ResponseErrorMessage`): everything that
  never reached a function is `{"code", "message"}` with the status of its `ErrorCode`
  (`crates/errors/src/lib.rs`): 400 BadRequest, 401 Unauthenticated, 403 Forbidden, 404,
  429 RateLimited, 503 for Overloaded and OCC (write conflicts that outlasted the backend's own
  retries). Codes: `BadJsonBody` (`common/src/http/extract.rs`), `BadFormat`
  (`value/src/export.rs`), `BadConvexFunctionIdentifier` (`local_backend/src/parse.rs`),
  `BadAdminKey` (`authentication/src/application_auth.rs`), `BadDeployKey`
  (`keybroker/src/operations.rs`).
- Numbers: every plain number is a float64 that serde_json writes as `3.0`
  (`value/src/export.rs`); int64 is `{"$integer": <base64 LE>}`, NaN/Infinity `{"$float"}`.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx

import src.services.store.convex as convex_module
from src.services.domain.work import WorkReport
from src.services.errors import (
    Conflict,
    HostFull,
    NotFound,
    RateLimited,
    StoreAuthError,
    StoreError,
    StoreMisconfigured,
    StoreRateLimited,
    StoreUnavailable,
)
from src.services.store.convex import ConvexStore, decode, encode
from src.services.store.convex_work import ClaimRefs

URL = "https://happy-otter-123.convex.cloud"
QUERY = f"{URL}/api/query"
MUTATION = f"{URL}/api/mutation"


def answer(status: int, text: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """A recorded answer, byte for byte as the backend writes it."""
    all_headers = {"content-type": "application/json", **(headers or {})}
    return httpx.Response(status, content=text.encode(), headers=all_headers)


SUCCESS_COUNT = answer(200, '{"status":"success","value":3.0}')
SUCCESS_WITH_LOGS = answer(200, '{"status":"success","value":null,"logLines":["[LOG] hi"]}')
NOT_FOUND_560 = answer(
    560,
    '{"status":"error","errorMessage":"Uncaught ConvexError: {\\"code\\":\\"NOT_FOUND\\",'
    '\\"message\\":\\"job x not found\\"}\\n    at handler (../convex/model/jobs.ts:29:9)",'
    '"errorData":{"code":"NOT_FOUND","message":"job x not found"}}',
)
UNCAUGHT_560 = answer(560, '{"status":"error","errorMessage":"[Request ID: 4f2a] Server Error"}')
ARGUMENT_VALIDATION_560 = answer(
    560,
    '{"status":"error","errorMessage":"ArgumentValidationError: Object is missing the required'
    " field `owner`. Consider wrapping the field validator in `v.optional(...)` if this is"
    ' expected.\\n\\nObject: {jobId: \\"j\\"}\\nValidator: v.object({jobId: v.string(),'
    ' owner: v.string()})"}',
)
MISSING_FUNCTION_560 = answer(
    560,
    '{"status":"error","errorMessage":"Could not find public function for \'apiTokens:count\'."}',
)
MISSING_FUNCTION_404 = answer(
    404,
    '{"code":"FunctionPathNotFound","message":"Could not find public function for'
    " 'apiTokens:count'.\"}",
)
NO_ROUTE_404 = answer(404, '{"code":"NotFound","message":"No route for POST /api/query"}')
BAD_JSON_BODY_400 = answer(
    400,
    '{"code":"BadJsonBody","message":"Failed to deserialize the JSON body into the target type:'
    ' missing field `args` at line 1 column 27"}',
)
BAD_FORMAT_400 = answer(
    400, '{"code":"BadFormat","message":"format param must be one of [`json`]. Got xml"}'
)
BAD_PATH_400 = answer(
    400,
    '{"code":"BadConvexFunctionIdentifier","message":"bad path! is not a valid path to a'
    ' Convex function."}',
)
BAD_ADMIN_KEY_401 = answer(
    401, '{"code":"BadAdminKey","message":"The provided admin key was invalid for this instance"}'
)
BAD_DEPLOY_KEY_403 = answer(
    403,
    '{"code":"BadDeployKey","message":"The provided deploy key was invalid for deployment'
    " 'happy-otter-123'.\"}",
)
RATE_LIMITED_429 = answer(
    429, '{"code":"RateLimited","message":"Too many requests"}', {"Retry-After": "2"}
)
OVERLOADED_503 = answer(503, '{"code":"Overloaded","message":"The deployment is overloaded"}')
HTML_502 = httpx.Response(502, content=b"<html>Bad Gateway</html>")


def convex_error(status: int, data: dict[str, Any]) -> httpx.Response:
    """A ConvexError thrown by one of our functions (convex/model/jobs.ts `fail`)."""
    message = f"Uncaught ConvexError: {json.dumps(data)}"
    return answer(
        status, json.dumps({"status": "error", "errorMessage": message, "errorData": data})
    )


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """What the retries waited; nothing really sleeps and backoff is 0 unless Retry-After."""
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(convex_module, "backoff", lambda attempt, **_: 0.0)
    monkeypatch.setattr(convex_module.asyncio, "sleep", no_sleep)
    return waits


@pytest.fixture
async def store(slept: list[float]) -> AsyncIterator[ConvexStore]:
    convex = ConvexStore(URL, "prod:secret-key", retries=3)
    yield convex
    await convex.aclose()


@respx.mock
async def test_sends_path_args_encoded_format_and_deploy_key(store: ConvexStore) -> None:
    route = respx.post(QUERY).mock(return_value=SUCCESS_COUNT)
    assert await store.count_tokens() == 3
    request = route.calls.last.request
    assert request.headers["authorization"] == "Convex prod:secret-key"
    assert request.read() == (
        b'{"path":"apiTokens:count","args":{},"format":"convex_encoded_json"}'
    )


@respx.mock
async def test_optional_arguments_are_left_out(store: ConvexStore) -> None:
    route = respx.post(MUTATION).mock(return_value=SUCCESS_WITH_LOGS)
    await store.start_stage("j1", "content_fetch")
    assert b"itemsTotal" not in route.calls.last.request.read()


@respx.mock
async def test_non_finite_floats_travel_as_convex_json(store: ConvexStore) -> None:
    route = respx.post(MUTATION).mock(return_value=answer(200, '{"status":"success","value":null}'))
    await store.complete_stage("j1", "s", metadata={"ratio": float("inf"), "n": 1})
    sent = json.loads(route.calls.last.request.read())
    assert sent["args"]["metadata"] == {"ratio": {"$float": "AAAAAAAA8H8="}, "n": 1}


@pytest.mark.parametrize("status", [200, 560])
@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"code": "NOT_FOUND", "message": "job x not found"}, NotFound),
        ({"code": "CONFLICT", "message": "bad move"}, Conflict),
        ({"code": "HOST_FULL", "message": "host local is full"}, HostFull),
        ({"code": "RATE_LIMITED", "message": "slow down", "retryAfterS": 42.0}, RateLimited),
    ],
)
@respx.mock
async def test_convex_error_data_maps_to_our_errors_once(
    store: ConvexStore, status: int, data: dict[str, Any], error: type[Exception]
) -> None:
    route = respx.post(MUTATION).mock(return_value=convex_error(status, data))
    with pytest.raises(error, match=str(data["message"])) as caught:
        await store.release("j", "w")
    assert not isinstance(caught.value, StoreUnavailable | StoreError)
    assert route.call_count == 1  # a function's answer is never retried
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after_s == 42


@respx.mock
async def test_recorded_560_with_error_data(store: ConvexStore) -> None:
    respx.post(MUTATION).mock(return_value=NOT_FOUND_560)
    with pytest.raises(NotFound, match="job x not found"):
        await store.start_stage("x", "s")


@pytest.mark.parametrize(
    ("recorded", "said"),
    [
        (UNCAUGHT_560, r"\[Request ID: 4f2a\] Server Error"),
        (ARGUMENT_VALIDATION_560, "ArgumentValidationError"),
    ],
)
@respx.mock
async def test_560_without_error_data_is_a_store_error_naming_the_function(
    store: ConvexStore, recorded: httpx.Response, said: str
) -> None:
    route = respx.post(MUTATION).mock(return_value=recorded)
    with pytest.raises(StoreError, match=f"bulkJobs:release failed: {said}") as caught:
        await store.release("j", "w")
    assert type(caught.value) is StoreError
    assert route.call_count == 1


@pytest.mark.parametrize("recorded", [MISSING_FUNCTION_560, MISSING_FUNCTION_404])
@respx.mock
async def test_missing_function_keeps_its_start_up_message(
    store: ConvexStore, recorded: httpx.Response
) -> None:
    respx.post(QUERY).mock(return_value=recorded)
    with pytest.raises(StoreMisconfigured, match=r"apiTokens:count is not deployed.*npx convex"):
        await store.count_tokens()


@pytest.mark.parametrize(
    "recorded", [NO_ROUTE_404, httpx.Response(308, headers={"location": f"{URL}/api/query/"})]
)
@respx.mock
async def test_a_route_that_does_not_exist_names_convex_url(
    store: ConvexStore, recorded: httpx.Response
) -> None:
    respx.post(QUERY).mock(return_value=recorded)
    with pytest.raises(StoreMisconfigured, match="CONVEX_URL must be the deployment URL"):
        await store.count_tokens()


@pytest.mark.parametrize(
    ("recorded", "said"),
    [
        (BAD_JSON_BODY_400, "HTTP 400 BadJsonBody: Failed to deserialize"),
        (BAD_FORMAT_400, "HTTP 400 BadFormat: format param"),
        (BAD_PATH_400, "HTTP 400 BadConvexFunctionIdentifier: bad path!"),
    ],
)
@respx.mock
async def test_400_is_a_store_error_with_the_backends_message(
    store: ConvexStore, recorded: httpx.Response, said: str
) -> None:
    route = respx.post(QUERY).mock(return_value=recorded)
    with pytest.raises(StoreError, match=f"call to apiTokens:count: {said}") as caught:
        await store.count_tokens()
    assert type(caught.value) is StoreError
    assert route.call_count == 1


@pytest.mark.parametrize(
    ("recorded", "code"), [(BAD_ADMIN_KEY_401, "BadAdminKey"), (BAD_DEPLOY_KEY_403, "BadDeployKey")]
)
@respx.mock
async def test_401_and_403_are_auth_errors_not_retried(
    store: ConvexStore, recorded: httpx.Response, code: str
) -> None:
    route = respx.post(QUERY).mock(return_value=recorded)
    with pytest.raises(StoreAuthError, match=rf"{code}.*check CONVEX_DEPLOY_KEY"):
        await store.count_tokens()
    assert route.call_count == 1


@respx.mock
async def test_429_honours_retry_after_then_succeeds(
    store: ConvexStore, slept: list[float]
) -> None:
    respx.post(QUERY).mock(side_effect=[RATE_LIMITED_429, SUCCESS_COUNT])
    assert await store.count_tokens() == 3
    assert slept == [2.0]


@respx.mock
async def test_429_forever_is_store_rate_limited_with_retry_after(
    store: ConvexStore, slept: list[float]
) -> None:
    route = respx.post(QUERY).mock(return_value=RATE_LIMITED_429)
    with pytest.raises(StoreRateLimited, match="RateLimited: Too many requests") as caught:
        await store.count_tokens()
    assert caught.value.retry_after_s == 2
    assert route.call_count == 4
    assert slept == [2.0, 2.0, 2.0]


@respx.mock
async def test_503_and_502_then_success(store: ConvexStore) -> None:
    respx.post(QUERY).mock(side_effect=[OVERLOADED_503, HTML_502, SUCCESS_COUNT])
    assert await store.count_tokens() == 3


@respx.mock
async def test_503_forever_is_store_unavailable_with_the_backends_code(store: ConvexStore) -> None:
    route = respx.post(QUERY).mock(return_value=OVERLOADED_503)
    with pytest.raises(StoreUnavailable, match="HTTP 503 Overloaded") as caught:
        await store.count_tokens()
    assert type(caught.value) is StoreUnavailable
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


@pytest.mark.parametrize("status", [200, 560])
@respx.mock
async def test_a_body_that_is_not_a_convex_answer(store: ConvexStore, status: int) -> None:
    respx.post(QUERY).mock(return_value=httpx.Response(status, content=b"<html>oops"))
    with pytest.raises(StoreUnavailable, match="not JSON"):
        await store.count_tokens()


def test_decode_convex_json_values() -> None:
    big = base64.b64encode((2**60).to_bytes(8, "little", signed=True)).decode()
    inf = base64.b64encode(struct.pack("<d", float("inf"))).decode()
    value = decode({"n": {"$integer": big}, "f": {"$float": inf}, "l": [1.0, 2.5, {"x": 3.0}]})
    assert value == {"n": 2**60, "f": float("inf"), "l": [1, 2.5, {"x": 3}]}
    assert [type(item) for item in value["l"][:2]] == [int, float]
    assert type(decode(2.0**60)) is float  # past 2**53 a float64 is not an exact integer


def test_encode_is_decodes_inverse_for_what_plain_json_cannot_say() -> None:
    value = {"nan": float("nan"), "ninf": float("-inf"), "raw": b"\x00\x01", "ok": [1, 0.5]}
    round_trip = decode(encode(value))
    assert round_trip["nan"] != round_trip["nan"]
    assert round_trip["ninf"] == float("-inf")
    assert round_trip["raw"] == b"\x00\x01"
    assert round_trip["ok"] == [1, 0.5]


def claimed(item_id: str, ref: str) -> dict[str, Any]:
    return {
        "itemId": item_id,
        "operation": "noop",
        "status": "running",
        "attempts": 1,
        "maxAttempts": 3,
        "createdAt": 1_000,
        "leaseOwner": "w1",
        "leaseExpiresAt": 61_000,
        "ref": ref,
    }


def success(value: Any) -> httpx.Response:
    return httpx.Response(200, json={"status": "success", "value": value})


@respx.mock
async def test_a_report_hands_back_the_ref_its_claim_answered_once(store: ConvexStore) -> None:
    sent: list[dict[str, Any]] = []

    def reply(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sent.append(body)
        if body["path"] == "workItems:claim":
            return success([claimed("a", "ref-a"), claimed("b", "ref-b")])
        if body["path"] == "workItems:report":
            return success([{"key": r["key"], "state": "applied"} for r in body["args"]["reports"]])
        return success(None)

    respx.post(MUTATION).mock(side_effect=reply)
    items = await store.work_claim("w1", None, 10, 60)
    assert [item.id for item in items] == ["a", "b"]
    await store.work_release("w1", ["b"])
    done = [WorkReport(item_id, "w1", "completed", f"k-{item_id}") for item_id in "ab"]
    await store.work_report(done)
    await store.work_report(done[:1])  # sent again: no ref left to send
    reports = [body["args"]["reports"] for body in sent if body["path"] == "workItems:report"]
    assert [r.get("ref") for r in reports[0]] == ["ref-a", None]
    assert reports[1][0].get("ref") is None


def test_claim_refs_are_bounded_oldest_first() -> None:
    refs = ClaimRefs(size=2)
    refs.remember([claimed("a", "1"), claimed("b", "2"), claimed("c", "3")])
    assert [refs.take("a"), refs.take("b"), refs.take("c")] == [None, "2", "3"]
