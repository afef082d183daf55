"""CloudRunExecutor through the real google-cloud-run and google-cloud-logging REST clients,
pointed at a small local fake of the Cloud Run Admin API v2 and of Cloud Logging `entries:list`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from src.services.containers.executors.cloudrun import CloudRunExecutor
from src.services.containers.executors.errors import (
    ExecutorConfigurationError,
    ExecutorConnectionError,
    ExecutorError,
)
from src.services.domain.containers import ContainerJob, ExecutorHost

JOB = "projects/demo/locations/europe-west1/jobs/runner"
SECRET = "-----BEGIN PRIVATE KEY-----fake-key-that-must-never-leak"
EXECUTION_PATH = re.compile(rf"^/v2/{JOB}/executions/([\w-]+)(:cancel)?$")


@dataclass
class FakeCloudRun:
    """The state behind the fake endpoints; tests set executions, errors and log entries."""

    executions: dict[str, dict[str, Any]] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)
    #: (status, body) answered to every request while set.
    error: tuple[int, dict[str, Any]] | None = None
    counter: int = 0

    def handle(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        self.requests.append((method, path, body))
        if self.error is not None:
            return self.error
        if method == "POST" and path == "/token":  # the service account's OAuth token
            return 200, {"access_token": "fake-access-token", "expires_in": 3600}
        if method == "POST" and path == f"/v2/{JOB}:run":
            return 200, self._run()
        if method == "GET" and path == f"/v2/{JOB}":
            return 200, {"name": JOB}
        if method == "POST" and path == "/v2/entries:list":
            return 200, {"entries": self.entries}
        match = EXECUTION_PATH.match(path)
        if match is None or match.group(1) not in self.executions:
            return 404, _error(404, "NOT_FOUND", f"{path} was not found")
        execution = self.executions[match.group(1)]
        if match.group(2):
            execution.update(cancelledCount=1, completionTime="2026-01-01T10:00:09Z")
            return 200, _operation(execution, done=True)
        return 200, execution

    def _run(self) -> dict[str, Any]:
        self.counter += 1
        short = f"runner-{self.counter:05d}"
        execution = {
            "name": f"{JOB}/executions/{short}",
            "job": "runner",
            "taskCount": 1,
            "startTime": "2026-01-01T10:00:00Z",
        }
        self.executions[short] = execution
        return _operation(execution, done=False)

    def finish(self, short: str, succeeded: bool, message: str = "") -> None:
        self.executions[short].update(
            completionTime="2026-01-01T10:00:05Z",
            succeededCount=1 if succeeded else 0,
            failedCount=0 if succeeded else 1,
            conditions=[
                {
                    "type": "Completed",
                    "state": "CONDITION_SUCCEEDED" if succeeded else "CONDITION_FAILED",
                    "message": message,
                }
            ],
        )


def _operation(execution: dict[str, Any], done: bool) -> dict[str, Any]:
    metadata = {"@type": "type.googleapis.com/google.cloud.run.v2.Execution", **execution}
    operation = "projects/demo/locations/europe-west1/operations/op-1"
    return {"name": operation, "metadata": metadata, "done": done}


def _error(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "status": status, "message": message}}


def _log(short: str, stream: str, text: str) -> dict[str, Any]:
    return {
        "logName": f"projects/demo/logs/run.googleapis.com%2F{stream}",
        "resource": {"type": "cloud_run_job", "labels": {"job_name": "runner"}},
        "labels": {"run.googleapis.com/execution_name": short},
        "textPayload": text,
        "timestamp": "2026-01-01T10:00:01Z",
    }


@pytest.fixture
def fake() -> Iterator[tuple[FakeCloudRun, str]]:
    state = FakeCloudRun()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            is_json = self.headers.get("Content-Type", "").startswith("application/json")
            body = json.loads(raw) if raw and is_json else raw.decode()
            state.authorizations.append(self.headers.get("Authorization", ""))
            status, answer = state.handle(self.command, self.path.split("?", 1)[0], body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def make_host(endpoint: str, **overrides: Any) -> ExecutorHost:
    config = {
        "project_id": "demo",
        "region": "europe-west1",
        "job_name": "runner",
        "api_endpoint": endpoint,
        "logging_endpoint": endpoint,
    } | overrides
    return ExecutorHost(id="h1", name="run", executor_type="cloudrun", executor_config=config)


@pytest.fixture
async def executor(fake: tuple[FakeCloudRun, str]) -> AsyncIterator[CloudRunExecutor]:
    executor = CloudRunExecutor(make_host(fake[1]))
    yield executor
    await executor.aclose()


def make_job(command: str = "echo hello", **fields: Any) -> ContainerJob:
    return ContainerJob(
        id="j1", executor_type="cloudrun", docker_image="busybox", command=command, **fields
    )


async def launch(executor: CloudRunExecutor, job: ContainerJob) -> str:
    result = await executor.launch_job(job, {"GREETING": "hi"})
    job.set_execution_identifier(result.execution_id)
    return result.execution_id


async def test_success(executor: CloudRunExecutor, fake: tuple[FakeCloudRun, str]) -> None:
    state, _ = fake
    job = make_job("sh -c 'echo $GREETING'", timeout_seconds=120)
    name = await launch(executor, job)
    assert name == f"{JOB}/executions/runner-00001"
    _, path, body = state.requests[0]
    assert path == f"/v2/{JOB}:run"
    container = body["overrides"]["containerOverrides"][0]
    assert container["args"] == ["sh", "-c", "echo $GREETING"]
    assert container["env"] == [{"name": "GREETING", "value": "hi"}]
    assert body["overrides"]["timeout"] == "120s"
    assert (await executor.check_status(name)).state == "running"

    state.finish("runner-00001", succeeded=True)
    state.entries = [
        _log("runner-00001", "stdout", "hi"),
        _log("runner-00001", "stderr", "warning: none"),
    ]
    result = await executor.harvest_job(job)
    assert (result.status, result.exit_code, result.reason) == ("completed", 0, "")
    assert (result.stdout, result.stderr) == ("hi\n", "warning: none\n")
    assert result.started_at is not None and result.finished_at is not None
    log_filter = state.requests[-1][2]["filter"]
    assert 'labels."run.googleapis.com/execution_name"="runner-00001"' in log_filter


async def test_failure(executor: CloudRunExecutor, fake: tuple[FakeCloudRun, str]) -> None:
    state, _ = fake
    job = make_job("false")
    name = await launch(executor, job)
    state.finish("runner-00001", succeeded=False, message="Task failed: the container exited.")
    status = await executor.check_status(name)
    assert (status.state, status.exit_code) == ("exited", 1)
    state.finish("runner-00001", succeeded=False, message="Container exited with code 3")
    assert (await executor.check_status(name)).exit_code == 3
    assert (await executor.harvest_job(job)).status == "failed"


async def test_timeout(executor: CloudRunExecutor, fake: tuple[FakeCloudRun, str]) -> None:
    state, _ = fake
    job = make_job("sleep 999")
    name = await launch(executor, job)
    state.finish("runner-00001", succeeded=False, message="The configured timeout was reached.")
    status = await executor.check_status(name)
    assert (status.state, status.reason) == ("exited", "timeout")
    assert (await executor.harvest_job(job)).status == "timeout"


async def test_not_found(executor: CloudRunExecutor) -> None:
    missing = f"{JOB}/executions/runner-gone"
    assert (await executor.check_status(missing)).state == "not-found"
    assert await executor.cleanup(missing) is False


async def test_cleanup_cancels_a_running_execution(
    executor: CloudRunExecutor, fake: tuple[FakeCloudRun, str]
) -> None:
    state, _ = fake
    name = await launch(executor, make_job())
    assert await executor.cleanup(name) is True
    assert state.requests[-1][:2] == ("POST", f"/v2/{name}:cancel")
    status = await executor.check_status(name)
    assert (status.state, status.reason) == ("failed", "cancelled")


async def test_server_error_is_transient(
    executor: CloudRunExecutor, fake: tuple[FakeCloudRun, str]
) -> None:
    state, _ = fake
    state.error = (500, _error(500, "INTERNAL", "backend exploded"))
    with pytest.raises(ExecutorError) as caught:
        await executor.launch_job(make_job(), {})
    assert caught.value.transient is True
    health = await executor.get_health_status()
    assert health["healthy"] is False
    assert "backend exploded" in health["error"]


async def test_permission_denied_is_a_configuration_error(
    executor: CloudRunExecutor, fake: tuple[FakeCloudRun, str]
) -> None:
    state, _ = fake
    state.error = (403, _error(403, "PERMISSION_DENIED", "caller lacks run.jobs.run"))
    with pytest.raises(ExecutorConfigurationError) as caught:
        await executor.launch_job(make_job(), {})
    assert caught.value.transient is False


async def test_health_and_capabilities(executor: CloudRunExecutor) -> None:
    health = await executor.get_health_status()
    assert (health["healthy"], health["error"]) == (True, None)
    capabilities = await executor.get_capabilities()
    assert "not reported" in capabilities["exit_code"]


async def test_bad_credentials_are_a_configuration_error(fake: tuple[FakeCloudRun, str]) -> None:
    host = make_host(fake[1], credentials={"type": "service_account", "private_key": SECRET})
    executor = CloudRunExecutor(host)
    with pytest.raises(ExecutorConfigurationError) as caught:
        await executor.launch_job(make_job(), {})
    assert SECRET not in str(caught.value)


def service_account_info(endpoint: str) -> dict[str, str]:
    """A real-looking service account whose token endpoint is the fake."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": "demo",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": "runner@demo.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": f"{endpoint}/token",
    }


async def test_credentials_never_leak(
    fake: tuple[FakeCloudRun, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    state, endpoint = fake
    info = service_account_info(endpoint)
    executor = CloudRunExecutor(make_host(endpoint, credentials=info))
    job = make_job()
    result = await executor.launch_job(job, {})
    job.set_execution_identifier(result.execution_id)
    # The Run client signs its own JWT with the key (self-signed JWT access), no token call.
    assert state.authorizations[-1].startswith("Bearer ey")
    state.finish("runner-00001", succeeded=True)
    harvest = await executor.harvest_job(job)
    # A server that echoes the key back must not get it into our messages.
    state.error = (403, _error(403, "PERMISSION_DENIED", f"key {info['private_key']} rejected"))
    with pytest.raises(ExecutorError) as caught:
        await executor.launch_job(job, {})
    seen = " ".join(
        [
            repr(result.metadata),
            repr(harvest),
            str(caught.value),
            repr(await executor.get_capabilities()),
            repr(await executor.get_health_status()),
            repr(executor.host),
            caplog.text,
        ]
    )
    await executor.aclose()
    key_body = info["private_key"].splitlines()[1]
    assert key_body not in seen
    assert "***" in str(caught.value)


async def test_unreachable_endpoint_is_a_connection_error() -> None:
    executor = CloudRunExecutor(make_host("http://127.0.0.1:9"))  # discard port: nothing listens
    with pytest.raises(ExecutorConnectionError):
        await executor.check_status(f"{JOB}/executions/runner-00001")
    await executor.aclose()
