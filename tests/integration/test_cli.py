"""The bulkjobs command line against a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from src.cli import app
from src.config import get_settings
from src.services.domain import Job
from src.services.store.local import LocalStore
from tests.convex_server import ConvexTestServer

runner = CliRunner()


@pytest.fixture(autouse=True)
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("BULKJOBS_DB_PATH", str(tmp_path / "cli.db"))
    monkeypatch.setenv("BULK_EXPORT_PATH", str(tmp_path / "exports"))
    monkeypatch.setenv("BULK_PROGRESS_INTERVAL_MS", "20")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_token_create_prints_only_the_token() -> None:
    result = runner.invoke(app, ["token", "create", "--user", "alice", "--admin"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("bjt_")
    assert len(result.stdout.strip().splitlines()) == 1


def test_run_a_spec_to_the_end(environment: Path) -> None:
    spec = environment / "spec.json"
    spec.write_text(
        json.dumps(
            {"job_type": "sample", "user_id": "me", "job_data": {"items": 30, "delay_ms": 1}}
        )
    )
    result = runner.invoke(app, ["run", str(spec)])
    assert result.exit_code == 0, result.output
    assert "completed" in result.stdout
    assert "export " in result.stdout
    listed = runner.invoke(app, ["jobs", "list", "--user", "me"])
    assert "sample" in listed.stdout and "completed" in listed.stdout
    job_id = result.stdout.split()[1].rstrip(":")
    shown = runner.invoke(app, ["jobs", "show", job_id])
    assert json.loads(shown.stdout)["status"] == "completed"


def test_run_a_container_batch_to_the_end(environment: Path) -> None:
    # Its container jobs run in this process too: nothing else is running them.
    data = {"image": "local", "command": "echo {item}", "items": [1, 2, 3]}
    spec = environment / "spec.json"
    spec.write_text(json.dumps({"job_type": "container_batch", "user_id": "me", "job_data": data}))
    result = runner.invoke(app, ["run", str(spec)])
    assert result.exit_code == 0, result.output
    job_id = result.stdout.split()[1].rstrip(":")
    shown = json.loads(runner.invoke(app, ["jobs", "show", job_id]).stdout)
    assert shown["status"] == "completed"
    processing = next(s for s in shown["stages"] if s["name"] == "content_processing")
    assert (processing["items_completed"], processing["items_failed"]) == (3, 0)


def test_ctrl_c_during_run_hands_the_job_back(environment: Path) -> None:
    spec = environment / "spec.json"
    body = {"job_type": "sample", "user_id": "me", "job_data": {"items": 500, "delay_ms": 20}}
    spec.write_text(json.dumps(body))
    env = {**os.environ, "BULKJOBS_LEASE_SECONDS": "600"}
    command = [str(Path(sys.executable).with_name("bulkjobs")), "run", str(spec)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        job = _wait_for_job(environment / "cli.db", lambda job: job.stages[1].items_completed > 0)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    finally:
        process.kill()
        process.communicate()
    job = _wait_for_job(environment / "cli.db", lambda job: True, job.id)
    assert (job.status, job.lease_owner, job.attempts) == ("processing", None, 0)
    assert job.lease_expires_at is not None and job.lease_expires_at.timestamp() == 0
    # so a worker resumes it at once, although the lease was 600 s
    finished = runner.invoke(app, ["worker", "--burst", "--operations", "bulk_job"])
    assert finished.exit_code == 0, finished.output
    shown = json.loads(runner.invoke(app, ["jobs", "show", job.id]).stdout)
    assert shown["status"] == "completed"


def _wait_for_job(
    db: Path, done: Callable[[Job], bool], job_id: str | None = None, timeout_s: float = 30
) -> Job:
    """The (only) job in the CLI's store once `done(job)`."""

    async def look() -> Job | None:
        async with LocalStore(db) as store:
            if job_id is not None:
                return await store.get_job(job_id)
            jobs = await store.get_user_jobs("me", limit=1)
            return jobs[0] if jobs else None

    deadline = time.monotonic() + timeout_s
    while True:
        job = asyncio.run(look()) if db.exists() else None
        if job is not None and done(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"the job did not get there in {timeout_s} s: {job}")
        time.sleep(0.1)


def test_jobs_retry_starts_a_job_over_the_failed_items(environment: Path) -> None:
    spec = environment / "spec.json"
    data = {"items": 12, "delay_ms": 0, "fail_every": 4}
    spec.write_text(json.dumps({"job_type": "sample", "user_id": "me", "job_data": data}))
    first = runner.invoke(app, ["run", str(spec)]).stdout.split()[1].rstrip(":")
    queued = runner.invoke(app, ["jobs", "retry", first[:8]])
    assert queued.exit_code == 0, queued.output
    new_id = queued.stdout.strip()
    assert f"retries the failed items of job {first}" in queued.stderr
    shown = json.loads(runner.invoke(app, ["jobs", "show", new_id]).stdout)
    assert (shown["status"], shown["retry_of"]) == ("pending", first)
    assert shown["job_data"]["item_numbers"] == [4, 8, 12]
    ran = runner.invoke(app, ["jobs", "retry", first, "--run"])
    assert ran.exit_code == 3, ran.output  # it completed, and every item failed again
    assert "3 items failed" in ran.stdout and "failed: item 8" in ran.stdout


def test_jobs_retry_refuses_a_job_without_failed_items(environment: Path) -> None:
    spec = environment / "spec.json"
    data = {"items": 2, "delay_ms": 0}
    spec.write_text(json.dumps({"job_type": "sample", "user_id": "me", "job_data": data}))
    job_id = runner.invoke(app, ["run", str(spec)]).stdout.split()[1].rstrip(":")
    refused = runner.invoke(app, ["jobs", "retry", job_id])
    assert refused.exit_code == 1
    assert "Conflict" in refused.stderr and "no failed items" in refused.stderr


def test_run_rejects_bad_specs(environment: Path) -> None:
    spec = environment / "spec.json"
    spec.write_text("{nope")
    assert runner.invoke(app, ["run", str(spec)]).exit_code == 2
    spec.write_text(json.dumps({"job_type": "sample", "job_data": {"items": -1}}))
    result = runner.invoke(app, ["run", str(spec)])
    assert result.exit_code == 2
    assert "job_data.items" in result.output


def test_cleanup_and_unknown_job() -> None:
    result = runner.invoke(app, ["cleanup"])
    assert result.exit_code == 0
    assert "removed 0 expired exports" in result.stdout
    assert runner.invoke(app, ["jobs", "show", "missing"]).exit_code == 1


def test_bad_setting_stops_with_the_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULK_RATE_LIMIT_MAX_JOBS", "lots")
    get_settings.cache_clear()
    result = runner.invoke(app, ["cleanup"])
    assert result.exit_code == 2
    assert "BULK_RATE_LIMIT_MAX_JOBS" in result.output


def test_convex_store_is_selected_by_the_environment(
    monkeypatch: pytest.MonkeyPatch, convex_server: ConvexTestServer
) -> None:
    convex_server.reset()
    monkeypatch.setenv("BULKJOBS_STORE", "convex")
    monkeypatch.setenv("CONVEX_URL", convex_server.url)
    monkeypatch.setenv("CONVEX_DEPLOY_KEY", convex_server.admin_key)
    get_settings.cache_clear()
    created = runner.invoke(app, ["token", "create", "--user", "carol"])
    assert created.exit_code == 0, created.output
    token_count = httpx.post(
        f"{convex_server.url}/api/query",
        json={"path": "apiTokens:count", "args": {}, "format": "json"},
        headers={"Authorization": f"Convex {convex_server.admin_key}"},
    ).json()
    assert token_count["value"] == 1


@pytest.mark.parametrize(
    ("url", "key", "message"),
    [
        ("http://127.0.0.1:9", "k", "CONVEX_URL=http://127.0.0.1:9"),
        (None, None, "CONVEX_URL"),
    ],
)
def test_convex_start_up_fails_clearly(
    monkeypatch: pytest.MonkeyPatch, url: str | None, key: str | None, message: str
) -> None:
    monkeypatch.setenv("BULKJOBS_STORE", "convex")
    for name, value in (("CONVEX_URL", url), ("CONVEX_DEPLOY_KEY", key)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    result = runner.invoke(app, ["cleanup"])
    assert result.exit_code == 2
    assert message in result.output


def test_convex_wrong_key_is_refused(
    monkeypatch: pytest.MonkeyPatch, convex_server: ConvexTestServer
) -> None:
    monkeypatch.setenv("BULKJOBS_STORE", "convex")
    monkeypatch.setenv("CONVEX_URL", convex_server.url)
    monkeypatch.setenv("CONVEX_DEPLOY_KEY", "wrong")
    get_settings.cache_clear()
    result = runner.invoke(app, ["cleanup"])
    assert result.exit_code == 2
    assert "CONVEX_DEPLOY_KEY" in result.output
