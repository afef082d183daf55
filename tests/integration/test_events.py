"""The live event streams (SSE) over both stores: snapshot first, then changes, to the end.

httpx's ASGITransport returns a response only once the app has finished it, so these tests
drive the app's ASGI interface directly and read the stream as it is sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from fastapi import FastAPI

from src.config import Settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.events import JobEventHub
from src.services.store.base import Store
from src.services.store.convex import ConvexStore
from src.services.store.local import LocalStore
from tests.convex_server import ConvexTestServer
from tests.integration.conftest import Api

SLOW_SAMPLE = {"job_type": "sample", "job_data": {"items": 30, "delay_ms": 20, "fail_every": 10}}
TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class Event:
    kind: str
    data: Any
    id: str | None


@dataclass
class Stream:
    """One streaming GET against the app; events are parsed as the body arrives."""

    status: int
    headers: dict[str, str]
    messages: asyncio.Queue[dict[str, Any]]
    buffer: bytes = b""
    comments: list[str] = field(default_factory=list)
    ended: bool = False

    async def next_event(self, timeout_s: float = 10) -> Event:
        async with asyncio.timeout(timeout_s):
            while True:
                if b"\n\n" in self.buffer:
                    block, self.buffer = self.buffer.split(b"\n\n", 1)
                    event = self._parse(block.decode())
                    if event is not None:
                        return event
                    continue
                message = await self.messages.get()
                self.buffer += message.get("body", b"")
                if not message.get("more_body", False):
                    self.ended = True
                    raise EOFError("the stream ended")

    def _parse(self, block: str) -> Event | None:
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
            else:
                name, _, value = line.partition(": ")
                fields[name] = value
        if "data" not in fields:
            return None
        return Event(fields.get("event", "message"), orjson.loads(fields["data"]), fields.get("id"))

    async def until(self, done: Any, timeout_s: float = 30) -> list[Event]:
        """Events until one satisfies `done(event)`; all of them, that one last."""
        seen: list[Event] = []
        async with asyncio.timeout(timeout_s):
            while not seen or not done(seen[-1]):
                seen.append(await self.next_event(timeout_s))
        return seen


@asynccontextmanager
async def stream(app: FastAPI, path: str, headers: dict[str, str]) -> AsyncIterator[Stream]:
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    gone = asyncio.Event()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await messages.put(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "server": ("test", 80),
        "client": ("127.0.0.1", 50000),
    }
    task = asyncio.create_task(app(scope, receive, send))
    start = await asyncio.wait_for(messages.get(), 10)
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    try:
        yield Stream(start["status"], response_headers, messages)
    finally:
        gone.set()
        await asyncio.wait_for(task, 10)


def hub(api: Api) -> JobEventHub:
    events: JobEventHub = api.app.state.events
    return events


async def create(api: Api, headers: dict[str, str], body: dict[str, Any] = SLOW_SAMPLE) -> str:
    response = await api.client.post("/bulk-jobs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def is_done(job_id: str) -> Any:
    return lambda event: (
        event.kind == "job"
        and (event.data["job_id"] == job_id and event.data["status"] in TERMINAL)
    )


async def test_user_stream_sends_a_snapshot_then_live_progress(api: Api) -> None:
    theirs = await create(api, api.bob)
    mine = await create(api, api.alice)
    async with stream(api.app, "/bulk-jobs/events", api.alice) as events:
        assert events.status == 200
        assert events.headers["content-type"].startswith("text/event-stream")
        assert events.headers["cache-control"] == "no-cache"
        snapshot = await events.next_event()
        assert snapshot.kind == "snapshot"
        assert [job["job_id"] for job in snapshot.data["jobs"]] == [mine]
        assert "job_data" not in snapshot.data["jobs"][0]
        changes = await events.until(is_done(mine))
    assert {event.data["job_id"] for event in changes} == {mine}
    assert theirs not in {event.data["job_id"] for event in changes}
    final = changes[-1].data
    assert final["status"] == "completed"
    assert final["items_failed"] == 3
    assert len(final["exports"]) == 1
    fetched = [event.data["stages"][1]["items_completed"] for event in changes]
    assert len(set(fetched)) >= 3, "progress within the stage arrives, not just the end"
    assert fetched == sorted(fetched)
    ids = [int(event.id or 0) for event in [snapshot, *changes]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_a_new_job_appears_in_an_open_stream(api: Api) -> None:
    async with stream(api.app, "/bulk-jobs/events", api.alice) as events:
        assert (await events.next_event()).data == {"jobs": []}
        job_id = await create(api, api.alice)
        first = await events.next_event()
        assert first.kind == "job" and first.data["job_id"] == job_id
        await events.until(is_done(job_id))


async def test_job_stream_follows_one_job_to_its_end(api: Api) -> None:
    job_id = await create(api, api.alice)
    await create(api, api.alice)
    async with stream(api.app, f"/bulk-jobs/{job_id}/events", api.alice) as events:
        snapshot = await events.next_event()
        [job] = snapshot.data["jobs"]
        assert job["job_id"] == job_id and job["job_data"]["items"] == 30
        changes = await events.until(is_done(job_id))
    assert {event.data["job_id"] for event in changes} == {job_id}
    assert [stage["status"] for stage in changes[-1].data["stages"]] == ["completed"] * 4


async def test_cancelling_shows_up_in_the_stream(api: Api) -> None:
    body = {"job_type": "sample", "job_data": {"items": 500, "delay_ms": 20}}
    job_id = await create(api, api.alice, body)
    async with stream(api.app, f"/bulk-jobs/{job_id}/events", api.alice) as events:
        await events.until(
            lambda event: (
                event.data["jobs"][0]["status"] != "pending"
                if event.kind == "snapshot"
                else event.data["status"] == "processing"
            )
        )
        response = await api.client.post(f"/bulk-jobs/{job_id}/cancel", headers=api.alice)
        assert response.status_code == 200
        changes = await events.until(is_done(job_id))
    assert changes[-1].data["status"] == "cancelled"


async def test_streams_need_a_token_and_hide_other_users_jobs(api: Api) -> None:
    job_id = await create(api, api.alice)
    for path in ("/bulk-jobs/events", f"/bulk-jobs/{job_id}/events"):
        async with stream(api.app, path, {}) as events:
            assert events.status == 401
    async with stream(api.app, f"/bulk-jobs/{job_id}/events", api.bob) as events:
        assert events.status == 404
    async with stream(api.app, "/bulk-jobs/nope/events", api.alice) as events:
        assert events.status == 404
    async with stream(api.app, f"/bulk-jobs/{job_id}/events", api.admin) as events:
        assert events.status == 200


@pytest.fixture
async def other_process(
    api: Api, store: Store, settings: Settings, request: pytest.FixtureRequest
) -> AsyncIterator[BulkJobManager]:
    """A manager on its own connection to the same state and without the app's event hook,
    as a `bulkjobs worker` on another machine would be: the streams must see its writes by
    reading the store."""
    other: LocalStore | ConvexStore
    if isinstance(store, LocalStore):
        other = LocalStore(settings.bulkjobs_db_path)
        await other.open()
    else:
        server: ConvexTestServer = request.getfixturevalue("convex_server")
        other = ConvexStore(server.url, server.admin_key)
    manager = BulkJobManager(settings, store=other)
    try:
        yield manager
    finally:
        await manager.aclose()
        await other.aclose()


async def test_changes_made_by_another_process_are_streamed(
    api: Api, other_process: BulkJobManager
) -> None:
    async with stream(api.app, "/bulk-jobs/events", api.alice) as events:
        assert (await events.next_event()).data == {"jobs": []}
        job_id = await other_process.create_bulk_job(
            "by_hand", "alice", {}, ["initialization", "content_fetch"]
        )
        assert (await events.next_event()).data["status"] == "pending"
        await other_process.start_stage(job_id, "initialization", items_total=10)
        await events.until(lambda e: e.data["stages"][0]["status"] == "processing")
        await other_process.update_stage_progress(job_id, "initialization", 0.5, 5)
        await events.until(lambda e: e.data["stages"][0]["items_completed"] == 5)
        await other_process.complete_stage(job_id, "initialization", 10)
        await other_process.start_stage(job_id, "content_fetch")
        await other_process.fail_stage(job_id, "content_fetch", "the source went away")
        failed = await events.until(lambda e: e.data["stages"][1]["status"] == "failed")
    assert failed[-1].data["stages"][1]["error_message"] == "the source went away"


async def test_reconnecting_gets_the_current_state_first(
    api: Api, other_process: BulkJobManager
) -> None:
    job_id = await other_process.create_bulk_job("by_hand", "alice", {}, ["initialization"])
    async with stream(api.app, f"/bulk-jobs/{job_id}/events", api.alice) as events:
        assert (await events.next_event()).data["jobs"][0]["status"] == "pending"
    await other_process.start_stage(job_id, "initialization", 4)
    await other_process.complete_stage(job_id, "initialization", 4)
    async with stream(api.app, f"/bulk-jobs/{job_id}/events", api.alice) as events:
        [job] = (await events.next_event()).data["jobs"]
    assert job["stages"][0]["status"] == "completed"
    assert job["items_completed"] == 4


async def test_heartbeats_keep_an_idle_stream_open(api: Api) -> None:
    hub(api).heartbeat_s = 0.05
    async with stream(api.app, "/bulk-jobs/events", api.alice) as events:
        await events.next_event()
        await asyncio.sleep(0.3)
        with pytest.raises(TimeoutError):
            await events.next_event(timeout_s=0.1)
    assert events.comments.count("heartbeat") >= 2


async def test_streams_share_one_watch_and_stop_it_when_they_close(api: Api) -> None:
    async with (
        stream(api.app, "/bulk-jobs/events", api.alice) as first,
        stream(api.app, "/bulk-jobs/events", api.alice) as second,
    ):
        await first.next_event()
        await second.next_event()
        assert list(hub(api)._watches) == ["user:alice"]
    await asyncio.sleep(0)
    assert hub(api)._watches == {}


async def test_shutdown_ends_open_streams(api: Api) -> None:
    async with stream(api.app, "/bulk-jobs/events", api.alice) as events:
        await events.next_event()
        await hub(api).aclose()
        with pytest.raises(EOFError):
            await events.next_event(timeout_s=5)
    assert events.ended
