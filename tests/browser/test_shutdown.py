"""A real server with an event stream open still stops at once on SIGINT (no browser needed).

uvicorn waits for open responses before shutting down; without the hub's signal hook an open
dashboard tab would keep `bulkjobs serve` from ever exiting.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from tests.browser.server import serve


def test_sigint_ends_open_event_streams_and_the_server(tmp_path: Path) -> None:
    with serve(tmp_path) as server:
        headers = {"Authorization": f"Bearer {server.admin_token}"}
        with (
            httpx.Client(base_url=server.base, headers=headers, timeout=10) as client,
            client.stream("GET", "/bulk-jobs/events") as response,
        ):
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("event:")) == "event: snapshot"
            started = time.monotonic()
            server.process.send_signal(signal.SIGINT)
            rest = list(lines)  # returns once the server has ended the stream
            assert time.monotonic() - started < 5
        assert not any(line.startswith("event:") for line in rest)
        assert server.process.wait(timeout=10) == 0
