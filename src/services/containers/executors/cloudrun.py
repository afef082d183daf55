"""CloudRunExecutor: runs a job as an execution of a Cloud Run job, over the REST API.

The host's Cloud Run job fixes the image, service account and resources; each execution
overrides the container's args (the job's command, split like a shell would), its environment
and the task timeout. Cloud Run reports success or failure but not the exit code, so success
is 0 and failure is 1 unless a condition message names the code. Output comes from Cloud
Logging (`run.googleapis.com/stdout` and `stderr`), also over REST.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import unquote

import requests
from google.api_core import exceptions as google_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import logging as cloud_logging
from google.cloud import run_v2
from google.oauth2 import service_account
from google.protobuf import duration_pb2

from src.services.containers.executors.base import (
    ExecutionStatus,
    HarvestResult,
    LaunchResult,
    cap_log,
    final_status,
    probe_health,
    scrub,
    secret_values,
)
from src.services.containers.executors.config import ExecutorConfig, Text
from src.services.containers.executors.errors import (
    ExecutorConfigurationError,
    ExecutorConnectionError,
    ExecutorError,
    ExecutorResourceError,
)
from src.services.domain import utcnow
from src.services.domain.containers import ContainerJob, ExecutorHost

T = TypeVar("T")

REQUIRED_KEYS = ("project_id", "region", "job_name")
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
#: Seconds one API call may take; the processor retries transient failures itself.
CALL_TIMEOUT_S = 30.0
#: Most log entries read for one execution (the result is capped to MAX_LOG_BYTES anyway).
MAX_LOG_ENTRIES = 5000
EXIT_CODE = re.compile(r"exit(?:ed with)? code:? ?(\d+)", re.IGNORECASE)
TIMEOUT_WORDS = ("timeout", "timed out", "deadline")
#: Over REST, 401 and 403 arrive as Unauthorized and Forbidden.
CONFIG_ERRORS = (
    google_exceptions.Unauthorized,
    google_exceptions.Forbidden,
    google_exceptions.Unauthenticated,
    google_exceptions.PermissionDenied,
)


class CloudRunConfig(ExecutorConfig):
    project_id: Text | None = None
    region: Text | None = None
    job_name: Text | None = None
    container_name: Text | None = None
    #: A service account key, as an object or as its JSON text.
    credentials: dict[str, Any] | Text | None = None
    api_endpoint: Text | None = None
    logging_endpoint: Text | None = None


class CloudRunExecutor:
    executor_type = "cloudrun"
    config_model = CloudRunConfig

    def __init__(self, host: ExecutorHost) -> None:
        self.host = host
        config = host.executor_config
        missing = [key for key in REQUIRED_KEYS if not config.get(key)]
        if missing:
            raise ExecutorConfigurationError(
                f"cloudrun: executor_config lacks {', '.join(missing)}"
            )
        self.project_id = str(config["project_id"])
        self.job_path = run_v2.JobsClient.job_path(
            self.project_id, str(config["region"]), str(config["job_name"])
        )
        self.container_name = str(config.get("container_name") or "")
        self._secrets = secret_values(config)
        self._jobs: run_v2.JobsClient | None = None
        self._executions: run_v2.ExecutionsClient | None = None
        self._logs: Any = None

    def _credentials(self) -> Credentials:
        config = self.host.executor_config
        info = config.get("credentials")
        if isinstance(info, str):
            info = json.loads(info)
        if info:
            from_info = service_account.Credentials.from_service_account_info
            account: Credentials = from_info(  # type: ignore[no-untyped-call, unused-ignore]  # google-auth has no type hints (none at all without the extras)
                info, scopes=SCOPES
            )
            return account
        if config.get("api_endpoint"):
            # A private or test endpoint that checks no token.
            return AnonymousCredentials()  # type: ignore[no-untyped-call, unused-ignore]  # google-auth has no type hints
        import google.auth

        default, _ = google.auth.default(scopes=SCOPES)
        found: Credentials = default
        return found

    def _open(self) -> None:
        """Build the clients on first use (reading credentials may do I/O: call in a thread)."""
        if self._jobs is not None:
            return
        config = self.host.executor_config
        credentials = self._credentials()
        endpoint = config.get("api_endpoint")
        options = {"api_endpoint": str(endpoint)} if endpoint else None
        self._jobs = run_v2.JobsClient(
            credentials=credentials, transport="rest", client_options=options
        )
        self._executions = run_v2.ExecutionsClient(
            credentials=credentials, transport="rest", client_options=options
        )
        logging_endpoint = config.get("logging_endpoint")
        self._logs = cloud_logging.Client(  # type: ignore[no-untyped-call, unused-ignore]  # google-cloud-logging has no type hints
            project=self.project_id,
            credentials=credentials,
            # REST like the Run clients; gRPC could not reach a plain-HTTP endpoint.
            _use_grpc=False,
            client_options={"api_endpoint": str(logging_endpoint)} if logging_endpoint else None,
        )

    def _jobs_client(self) -> run_v2.JobsClient:
        self._open()
        assert self._jobs is not None
        return self._jobs

    def _executions_client(self) -> run_v2.ExecutionsClient:
        self._open()
        assert self._executions is not None
        return self._executions

    async def _run(self, call: Callable[[], T], what: str) -> T:
        """A blocking client call in a thread, with Google's errors translated into ours."""
        try:
            return await asyncio.to_thread(call)
        except Exception as exc:
            translated = translate_error(exc, what, self._secrets)
            if translated is None:
                raise
            raise translated from None

    async def launch_job(self, job: ContainerJob, env: dict[str, str]) -> LaunchResult:
        request = run_v2.RunJobRequest(name=self.job_path, overrides=self._overrides(job, env))

        def run() -> run_v2.Execution:
            operation = self._jobs_client().run_job(
                request=request, retry=None, timeout=CALL_TIMEOUT_S
            )
            execution: run_v2.Execution = operation.metadata
            return execution

        execution = await self._run(run, "run job")
        if execution is None or not execution.name:
            raise ExecutorError("cloudrun: the run operation named no execution", transient=True)
        return LaunchResult(
            execution.name,
            {
                "execution_name": execution.name,
                "job": self.job_path,
                "region": str(self.host.executor_config["region"]),
            },
        )

    def _overrides(self, job: ContainerJob, env: dict[str, str]) -> run_v2.RunJobRequest.Overrides:
        args = shlex.split(job.command)
        container = run_v2.RunJobRequest.Overrides.ContainerOverride(
            name=self.container_name,
            args=args,
            clear_args=not args,
            env=[run_v2.EnvVar(name=key, value=value) for key, value in env.items()],
        )
        return run_v2.RunJobRequest.Overrides(
            container_overrides=[container],
            task_count=1,
            timeout=duration_pb2.Duration(seconds=job.timeout_seconds),
        )

    async def _get(self, execution_name: str) -> run_v2.Execution | None:
        def get() -> run_v2.Execution:
            return self._executions_client().get_execution(
                name=execution_name, retry=None, timeout=CALL_TIMEOUT_S
            )

        try:
            return await self._run(get, "get execution")
        except ExecutorResourceError:
            return None

    async def check_status(self, execution_id: str) -> ExecutionStatus:
        execution = await self._get(execution_id)
        return ExecutionStatus("not-found") if execution is None else execution_status(execution)

    async def get_logs(self, execution_id: str) -> tuple[str, str]:
        return await self._read_logs(execution_id, None)

    async def _read_logs(self, execution_name: str, since: datetime | None) -> tuple[str, str]:
        short_name = execution_name.rsplit("/", 1)[-1]
        terms = [
            'resource.type="cloud_run_job"',
            f'labels."run.googleapis.com/execution_name"="{short_name}"',
        ]
        if since is not None:
            # Without a timestamp term the client only looks at the last 24 hours.
            terms.append(f'timestamp>="{(since - timedelta(minutes=1)).isoformat()}"')

        def read() -> list[Any]:
            self._open()
            entries = self._logs.list_entries(
                resource_names=[f"projects/{self.project_id}"],
                filter_=" AND ".join(terms),
                order_by=cloud_logging.ASCENDING,
                page_size=1000,
                max_results=MAX_LOG_ENTRIES,
            )
            return list(entries)

        entries = await self._run(read, "read logs")
        return split_streams(entries)

    async def harvest_job(self, job: ContainerJob) -> HarvestResult:
        execution_id = job.get_execution_identifier()
        execution = await self._get(execution_id)
        if execution is None:
            status, started, finished = ExecutionStatus("not-found"), None, None
        else:
            status = execution_status(execution)
            started = _datetime(execution, "start_time")
            finished = _datetime(execution, "completion_time")
        stdout, stderr = await self._read_logs(execution_id, started)
        return HarvestResult(
            status=final_status(status.exit_code, status.reason),
            exit_code=status.exit_code,
            stdout=stdout,
            stderr=stderr,
            started_at=started,
            finished_at=finished or utcnow(),
            reason=status.reason,
            metadata={"log_uri": execution.log_uri} if execution is not None else {},
        )

    async def cleanup(self, execution_id: str) -> bool:
        execution = await self._get(execution_id)
        if execution is None:
            return False
        if _datetime(execution, "completion_time") is None:

            def cancel() -> None:
                self._executions_client().cancel_execution(
                    name=execution_id, retry=None, timeout=CALL_TIMEOUT_S
                )

            await self._run(cancel, "cancel execution")
        return True

    async def get_health_status(self) -> dict[str, Any]:
        def get_job() -> run_v2.Job:
            return self._jobs_client().get_job(
                name=self.job_path, retry=None, timeout=CALL_TIMEOUT_S
            )

        async def check() -> None:
            await self._run(get_job, "get job")

        return await probe_health(check)

    async def get_capabilities(self) -> dict[str, Any]:
        return {
            "supports_resource_limits": False,
            "supports_networking": False,
            "supports_persistent_storage": False,
            "supports_secrets": True,
            "supports_gpu": False,
            "supports_scaling": True,
            "image": "fixed by the Cloud Run job; job.docker_image is not applied",
            "resources": "CPU and memory come from the Cloud Run job; executions cannot"
            " override them",
            "command": "the job's command replaces the container's args, not its entrypoint",
            "timeout": "enforced by Cloud Run (per-execution task timeout override)",
            "exit_code": "not reported by Cloud Run: 0 on success, else 1 unless a condition"
            " message names the code",
            "logs": "Cloud Logging run.googleapis.com/stdout and stderr",
        }

    async def aclose(self) -> None:
        closers = [c.transport.close for c in (self._jobs, self._executions) if c is not None]
        if self._logs is not None:
            closers.append(self._logs.close)
        self._jobs = self._executions = self._logs = None
        for close in closers:
            await asyncio.to_thread(close)


def execution_status(execution: run_v2.Execution) -> ExecutionStatus:
    """What an Execution says: running until it has a completion time."""
    if _datetime(execution, "completion_time") is None:
        return ExecutionStatus("running")
    messages = " ".join(condition.message for condition in execution.conditions)
    timed_out = any(word in messages.lower() for word in TIMEOUT_WORDS)
    if execution.failed_count:
        match = EXIT_CODE.search(messages)
        code = int(match.group(1)) if match else 1
        return ExecutionStatus("exited", code, "timeout" if timed_out else "")
    if execution.succeeded_count and execution.succeeded_count >= execution.task_count:
        return ExecutionStatus("exited", 0)
    if execution.cancelled_count:
        return ExecutionStatus("failed", None, "cancelled")
    return ExecutionStatus("failed", None, "timeout" if timed_out else messages or "unknown")


def split_streams(entries: list[Any]) -> tuple[str, str]:
    """Entries of run.googleapis.com/stdout and /stderr as two texts (others go to stdout)."""
    stdout: list[str] = []
    stderr: list[str] = []
    for entry in entries:
        payload = entry.payload
        if isinstance(payload, dict):
            payload = payload.get("message") or json.dumps(payload)
        line = "" if payload is None else str(payload)
        target = stderr if unquote(entry.log_name or "").endswith("/stderr") else stdout
        target.append(line if line.endswith("\n") else line + "\n")
    return cap_log("".join(stdout)), cap_log("".join(stderr))


def _datetime(execution: run_v2.Execution, field: str) -> datetime | None:
    if field not in execution:
        return None
    value: datetime = getattr(execution, field)
    return value


def translate_error(exc: Exception, what: str, secrets: list[str]) -> ExecutorError | None:
    """A Google client error as one of ours (None: not a backend error, let it rise)."""
    message = scrub(f"cloudrun: {what}: {type(exc).__name__}: {exc}", secrets)
    if isinstance(exc, google_exceptions.NotFound):
        return ExecutorResourceError(message)
    if isinstance(exc, CONFIG_ERRORS):
        return ExecutorConfigurationError(message)
    if isinstance(exc, google_exceptions.GoogleAPICallError):
        code = int(exc.code or 0)
        return ExecutorError(message, transient=code == 429 or code >= 500)
    if isinstance(exc, google_exceptions.RetryError | requests.ConnectionError | requests.Timeout):
        return ExecutorConnectionError(message)
    if isinstance(exc, auth_exceptions.GoogleAuthError | ValueError):
        # Bad service-account JSON, no default credentials, a refused token refresh.
        return ExecutorConfigurationError(scrub(f"cloudrun: {what}: credentials: {exc}", secrets))
    return None
