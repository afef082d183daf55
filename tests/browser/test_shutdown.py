"""A real server stops cleanly on SIGINT (no browser needed): at once even with an event stream
open, and handing the leases of running jobs back so that a restart resumes them at once.

uvicorn waits for open responses before shutting down; without the hub's signal hook an open
dashboard tab would keep `bulkjobs serve` from ever exiting.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def test_a_clean_stop_hands_running_jobs_back_so_a_restart_resumes_at_once(
    tmp_path: Path,
) -> None:
    # A lease far longer than the test: only a handed-back job can be resumed in time.
    env = {"BULKJOBS_LEASE_SECONDS": "600"}
    with serve(tmp_path, **env) as server, server.api(server.admin_token) as client:
        body = {"job_type": "sample", "job_data": {"items": 400, "delay_ms": 10}}
        job_id = client.post("/bulk-jobs", json=body).json()["job_id"]
        _wait(client, job_id, lambda job: job["stages"][1]["items_completed"] > 0)
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=15) == 0
        token = server.admin_token
    with serve(tmp_path, token, **env) as server, server.api(server.admin_token) as client:
        job = _wait(client, job_id, lambda job: job["status"] == "completed", timeout_s=60)
        assert job["stages"][0]["status"] == "completed"


def _wait(
    client: httpx.Client,
    job_id: str,
    done: Callable[[dict[str, Any]], bool],
    timeout_s: float = 30,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = client.get(f"/bulk-jobs/{job_id}").json()
        if done(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job did not get there in {timeout_s} s: {job}")
        time.sleep(0.1)
