"""ScalewayExecutor: runs a job as a run of a Scaleway Serverless Jobs job definition.

It speaks the v1alpha1 REST API with httpx: `POST /job-definitions/{id}/start` with the
run's `command` (one string, the startup command) and `environment_variables`, then
`GET /job-runs/{id}` and `POST /job-runs/{id}/stop`. Image, CPU, memory and the platform's
own timeout belong to the job definition; v1alpha1 cannot override them per run. Logs go to
Cockpit, which this API does not serve, so only the run's error message comes back.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import httpx

from src.services.containers.executors.base import (
    ExecutionStatus,
    HarvestResult,
    LaunchResult,
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

API_URL = "https://api.scaleway.com/serverless-jobs/v1alpha1/regions/{region}"
REQUIRED_KEYS = ("region", "job_definition_id", "secret_key")
RUNNING_STATES = frozenset({"unknown_state", "queued", "scheduled", "running"})
#: The reason this executor gives a run it stops for running past the job's timeout.
TIMEOUT_REASON = "timeout"


class ScalewayConfig(ExecutorConfig):
    region: Text | None = None
    job_definition_id: Text | None = None
    secret_key: Text | None = None
    #: The API base URL; `{region}` is filled in.
    api_url: Text | None = None


class ScalewayExecutor:
    executor_type = "scaleway"
    config_model = ScalewayConfig

    def __init__(self, host: ExecutorHost) -> None:
        self.host = host
        config = host.executor_config
        missing = [key for key in REQUIRED_KEYS if not config.get(key)]
        if missing:
            raise ExecutorConfigurationError(
                f"scaleway: executor_config lacks {', '.join(missing)}"
            )
        self.job_definition_id = str(config["job_definition_id"])
        base = str(config.get("api_url") or API_URL).format(region=config["region"])
        self._secrets = secret_values(config)
        self._http = httpx.AsyncClient(
            base_url=base,
            headers={"X-Auth-Token": str(config["secret_key"])},
            timeout=httpx.Timeout(30.0, connect=5.0),
        )
        #: (launch time, timeout seconds) of the runs this process started, by run id.
        self._launches: dict[str, tuple[float, int]] = {}
        #: Runs this executor stopped because they passed the job's timeout.
        self._timed_out: set[str] = set()

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One API call; Scaleway's errors become ours, with no secret in the message."""
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            message = f"scaleway: {method} {path}: {type(exc).__name__}: {exc}"
            raise ExecutorConnectionError(scrub(message, self._secrets)) from None
        if response.is_success:
            body: dict[str, Any] = response.json() if response.content else {}
            return body
        raise self._error(method, path, response)

    def _error(self, method: str, path: str, response: httpx.Response) -> ExecutorError:
        status = response.status_code
        message = scrub(
            f"scaleway: {method} {path}: HTTP {status}: {_message(response)}", self._secrets
        )
        if status in (401, 403):
            return ExecutorConfigurationError(message)
        if status == 404:
            return ExecutorResourceError(message)
        return ExecutorError(message, transient=status == 429 or status >= 500)

    async def launch_job(self, job: ContainerJob, env: dict[str, str]) -> LaunchResult:
        body: dict[str, Any] = {"environment_variables": env}
        if job.command:
            body["command"] = job.command
        path = f"/job-definitions/{self.job_definition_id}/start"
        response = await self._request("POST", path, json=body)
        # v1alpha1 answers {"job_runs": [...]}; early versions answered the run itself.
        runs = response.get("job_runs") or ([response] if response.get("id") else [])
        if not runs:
            raise ExecutorError("scaleway: start returned no job run", transient=True)
        run_id = str(runs[0]["id"])
        self._launches[run_id] = (time.time(), job.timeout_seconds)
        return LaunchResult(
            run_id,
            {
                "job_run_id": run_id,
                "job_definition_id": self.job_definition_id,
                "region": str(self.host.executor_config["region"]),
            },
        )

    async def _get_run(self, run_id: str) -> dict[str, Any] | None:
        try:
            return await self._request("GET", f"/job-runs/{run_id}")
        except ExecutorResourceError:
            return None

    async def check_status(self, execution_id: str) -> ExecutionStatus:
        run = await self._get_run(execution_id)
        if run is None:
            return ExecutionStatus("not-found")
        if run.get("state") in RUNNING_STATES and self._past_deadline(execution_id):
            await self._stop(execution_id)
            return ExecutionStatus("exited", None, TIMEOUT_REASON)
        return _status(run, timed_out=execution_id in self._timed_out)

    def _past_deadline(self, run_id: str) -> bool:
        launched = self._launches.get(run_id)
        if launched is None:
            return False
        launched_at, timeout = launched
        return time.time() > launched_at + timeout

    async def _stop(self, run_id: str) -> None:
        await self._request("POST", f"/job-runs/{run_id}/stop", json={})
        self._timed_out.add(run_id)

    async def get_logs(self, execution_id: str) -> tuple[str, str]:
        """No stdout: Scaleway sends job output to Cockpit. stderr is the run's error message."""
        run = await self._get_run(execution_id)
        return "", str((run or {}).get("error_message") or "")

    async def harvest_job(self, job: ContainerJob) -> HarvestResult:
        execution_id = job.get_execution_identifier()
        run = await self._get_run(execution_id)
        if run is None:
            status = ExecutionStatus("not-found")
        else:
            status = _status(run, timed_out=execution_id in self._timed_out)
        return HarvestResult(
            status=final_status(status.exit_code, status.reason),
            exit_code=status.exit_code,
            stdout="",
            stderr=str((run or {}).get("error_message") or ""),
            started_at=_datetime(run, "started_at"),
            finished_at=_datetime(run, "terminated_at") or utcnow(),
            reason=status.reason,
            metadata={"state": run.get("state", "")} if run else {},
        )

    async def cleanup(self, execution_id: str) -> bool:
        run = await self._get_run(execution_id)
        self._launches.pop(execution_id, None)
        self._timed_out.discard(execution_id)
        if run is None:
            return False
        if run.get("state") in RUNNING_STATES:
            await self._request("POST", f"/job-runs/{execution_id}/stop", json={})
        return True

    async def get_health_status(self) -> dict[str, Any]:
        async def check() -> None:
            await self._request("GET", f"/job-definitions/{self.job_definition_id}")

        return await probe_health(check)

    async def get_capabilities(self) -> dict[str, Any]:
        return {
            "supports_resource_limits": False,
            "supports_networking": False,
            "supports_persistent_storage": False,
            "supports_secrets": True,
            "supports_gpu": False,
            "supports_scaling": True,
            "image": "fixed by the job definition; job.docker_image is not applied",
            "resources": "CPU and memory come from the job definition; per-run limits are"
            " not supported by the v1alpha1 start call",
            "logs": "not available through this API (Scaleway sends job output to Cockpit);"
            " stdout is empty and stderr holds the run's error message, if any",
            "timeout": "the job definition's job_timeout, plus this executor stopping runs it"
            " launched once they pass the job's timeout_seconds",
            "exit_code": "as reported by the job run",
        }

    async def aclose(self) -> None:
        await self._http.aclose()


def _status(run: dict[str, Any], timed_out: bool = False) -> ExecutionStatus:
    state = str(run.get("state") or "unknown_state")
    exit_code = run.get("exit_code")
    code = int(exit_code) if exit_code is not None else None
    error = str(run.get("error_message") or "")
    if state in RUNNING_STATES:
        return ExecutionStatus("running")
    if timed_out or "timeout" in error.lower() or "timed out" in error.lower():
        return ExecutionStatus("exited", code, TIMEOUT_REASON)
    if state == "succeeded":
        return ExecutionStatus("exited", 0 if code is None else code)
    if state == "failed" and code is not None:
        return ExecutionStatus("exited", code, error)
    # canceled, interrupted, internal_error, or failed before the container ran.
    return ExecutionStatus("failed", code, error or state)


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("type") or body)[:500]
    return str(body)[:500]


def _datetime(run: dict[str, Any] | None, key: str) -> datetime | None:
    value = (run or {}).get(key)
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None
