"""Server-sent event streams of bulk jobs: the caller's jobs, or one job, live.

Each stream starts with a `snapshot` event (the current state, so a client that reconnects
needs no replay and Last-Event-ID is not used), then sends a `job` event per changed job and
a comment line every ~15 s so proxies keep it open. Auth is the bearer header, as everywhere:
the dashboard reads the stream with fetch, so no token ever sits in a URL.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

import orjson
from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from src.routes.deps import CurrentUser, Events, Manager, owner_filter
from src.routes.validation import JsonRoute
from src.services.events import JobEvent

# Not in the OpenAPI document: a stream that never ends is something schema-driven clients
# and fuzzers cannot handle (they wait for the end of the body). The README documents them.
router = APIRouter(route_class=JsonRoute, tags=["bulk jobs"], include_in_schema=False)

#: Asks EventSource clients to reconnect after 2 s (the dashboard's fetch reader backs off).
RETRY = b"retry: 2000\n\n"
HEARTBEAT = b": heartbeat\n\n"
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def encode(event: JobEvent, number: int) -> bytes:
    """One SSE message; orjson escapes newlines, so the data is always a single line."""
    if event.kind == "heartbeat":
        return HEARTBEAT
    head = b"id: %d\nevent: %s\ndata: " % (number, event.kind.encode())
    return head + orjson.dumps(event.data) + b"\n\n"


async def sse(events: AsyncGenerator[JobEvent, None]) -> AsyncIterator[bytes]:
    yield RETRY
    async with contextlib.aclosing(events):
        number = 0
        async for event in events:
            number += event.kind != "heartbeat"
            yield encode(event, number)


def stream(events: AsyncGenerator[JobEvent, None]) -> StreamingResponse:
    return StreamingResponse(sse(events), media_type="text/event-stream", headers=STREAM_HEADERS)


@router.get("/bulk-jobs/events")
async def user_job_events(user: CurrentUser, events: Events) -> StreamingResponse:
    """Your newest 200 jobs (without job_data and results), then each change, live."""
    return stream(events.user_events(user.user_id))


@router.get("/bulk-jobs/{job_id}/events")
async def job_events(
    job_id: str, user: CurrentUser, manager: Manager, events: Events
) -> StreamingResponse:
    """One of your jobs (by id or a unique start of it), then each change to it, live."""
    job = await manager.find_job(job_id, owner_filter(user))
    return stream(events.job_events(job.id))
