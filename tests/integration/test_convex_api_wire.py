"""The HTTP API over BULKJOBS_STORE=convex when Convex answers a function's error with 560, as
the hosted backend does: the sixth job is a 429 with Retry-After, an illegal transition a 409.
A transport records what the test Convex server answered, so the 560s are seen, not assumed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from src.services.domain import BulkJobStatus
from src.services.store.convex import ConvexStore
from tests.convex_server import ConvexTestServer
from tests.integration.conftest import Api

SAMPLE = {"job_type": "sample", "job_data": {"items": 3, "delay_ms": 1}}


class Recorder(httpx.AsyncHTTPTransport):
    """Loopback transport that remembers (function path, HTTP status) of every answer."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[tuple[str, int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        self.answers.append((json.loads(request.content)["path"], response.status_code))
        return response

    def statuses(self, path: str) -> list[int]:
        return [status for called, status in self.answers if called == path]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def store(convex_server: ConvexTestServer, recorder: Recorder) -> AsyncIterator[ConvexStore]:
    """Overrides the conftest's store: Convex only, through the recording transport."""
    convex_server.reset()
    convex = ConvexStore(convex_server.url, convex_server.admin_key, transport=recorder)
    await convex.open()
    yield convex
    await convex.aclose()


async def test_the_sixth_job_is_429_with_retry_after(api: Api, recorder: Recorder) -> None:
    codes = [
        (await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)).status_code
        for _ in range(5)
    ]
    refused = await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)
    assert codes == [202] * 5
    assert refused.status_code == 429
    assert 3590 <= int(refused.headers["retry-after"]) <= 3600
    assert refused.json()["error"] == "RateLimited"
    assert recorder.statuses("bulkJobs:create") == [200] * 5 + [560]


async def test_an_illegal_transition_is_409(
    api: Api, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = (await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)).json()["job_id"]
    await api.wait_for(job_id)
    # The job completes between the service's read and its cancel, so the store, not the
    # service's own check, refuses the move completed -> cancelled.
    job = await api.manager.get_job(job_id)
    assert job is not None and job.status == BulkJobStatus.COMPLETED
    stale = job.model_copy(update={"status": BulkJobStatus.PROCESSING})

    async def stale_read(wanted: str) -> object:
        return stale

    monkeypatch.setattr(api.manager, "get_job", stale_read)
    refused = await api.client.post(f"/bulk-jobs/{job_id}/cancel", headers=api.alice)
    assert refused.status_code == 409
    assert refused.json()["error"] == "Conflict"
    assert recorder.statuses("bulkJobs:updateStatus")[-1] == 560
