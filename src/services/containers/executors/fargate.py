"""FargateExecutor: runs a job as an ECS task on AWS Fargate and reads its output from CloudWatch.

The host's task definition fixes the image, roles and the awslogs driver; each job runs it with
its command, environment, memory and CPU as container overrides. ECS has no per-task timeout,
so the executor stops a task that is still running past the job's timeout when it checks it.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)
from pydantic import Field

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

REQUIRED_KEYS = ("region", "cluster", "task_definition", "subnets")
#: The stoppedReason this executor gives a task it stops for running past its timeout.
TIMEOUT_REASON = "bulkjobs: timeout"
TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ServerException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalError",
    }
)
CONFIG_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "ClusterNotFoundException",
    }
)
#: Most CloudWatch pages read for one task (10,000 events or 1 MB each).
MAX_LOG_PAGES = 20


class FargateConfig(ExecutorConfig):
    region: Text | None = None
    cluster: Text | None = None
    task_definition: Text | None = None
    subnets: list[Text] = Field(default_factory=list, max_length=100)
    security_groups: list[Text] = Field(default_factory=list, max_length=100)
    assign_public_ip: bool = False
    container_name: Text | None = None
    log_group: Text | None = None
    log_stream_prefix: Text | None = None
    aws_access_key_id: Text | None = None
    aws_secret_access_key: Text | None = None
    aws_session_token: Text | None = None
    endpoint_url: Text | None = None


class FargateExecutor:
    executor_type = "fargate"
    config_model = FargateConfig

    def __init__(self, host: ExecutorHost) -> None:
        self.host = host
        config = host.executor_config
        missing = [key for key in REQUIRED_KEYS if not config.get(key)]
        if missing:
            raise ExecutorConfigurationError(f"fargate: executor_config lacks {', '.join(missing)}")
        self.cluster = str(config["cluster"])
        self.task_definition = str(config["task_definition"])
        self.container_name: str | None = config.get("container_name") or None
        self.log_group: str | None = config.get("log_group") or None
        self.log_stream_prefix = str(config.get("log_stream_prefix") or "ecs")
        self._secrets = secret_values(config)
        self._clients: dict[str, Any] = {}
        #: (launch time, timeout seconds) of the tasks this process launched, by task ARN.
        self._launches: dict[str, tuple[float, int]] = {}

    def _client(self, service: str) -> Any:
        """A boto3 client, built on first use (building one reads files: call from a thread)."""
        if service not in self._clients:
            config = self.host.executor_config
            session = boto3.session.Session(
                aws_access_key_id=config.get("aws_access_key_id") or None,
                aws_secret_access_key=config.get("aws_secret_access_key") or None,
                aws_session_token=config.get("aws_session_token") or None,
                region_name=str(config["region"]),
            )
            self._clients[service] = session.client(
                service,
                endpoint_url=config.get("endpoint_url") or None,
                config=Config(connect_timeout=5, read_timeout=30, retries={"mode": "standard"}),
            )
        return self._clients[service]

    async def _call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        """One API call in a thread, with botocore errors translated into ours."""

        def call() -> dict[str, Any]:
            result: dict[str, Any] = getattr(self._client(service), operation)(**params)
            return result

        return await self._guarded(call, operation)

    async def _guarded(self, call: Callable[[], T], operation: str) -> T:
        try:
            return await asyncio.to_thread(call)
        except (ClientError, BotoCoreError) as exc:
            raise translate_error(exc, operation, self._secrets) from None

    async def launch_job(self, job: ContainerJob, env: dict[str, str]) -> LaunchResult:
        container = await self._container_name()
        response = await self._call(
            "ecs",
            "run_task",
            cluster=self.cluster,
            taskDefinition=self.task_definition,
            launchType="FARGATE",
            count=1,
            startedBy="bulkjobs",
            networkConfiguration=self._network(),
            overrides={"containerOverrides": [_container_override(container, job, env)]},
        )
        tasks = response.get("tasks") or []
        if not tasks:
            raise _launch_failure(response.get("failures") or [])
        task_arn = str(tasks[0]["taskArn"])
        self._launches[task_arn] = (time.time(), job.timeout_seconds)
        return LaunchResult(
            task_arn,
            {
                "cluster": self.cluster,
                "task_arn": task_arn,
                "task_definition": str(tasks[0].get("taskDefinitionArn", self.task_definition)),
                "container_name": container,
                "region": str(self.host.executor_config["region"]),
            },
        )

    def _network(self) -> dict[str, Any]:
        config = self.host.executor_config
        public = "ENABLED" if config.get("assign_public_ip") else "DISABLED"
        return {
            "awsvpcConfiguration": {
                "subnets": list(config["subnets"]),
                "securityGroups": list(config.get("security_groups") or []),
                "assignPublicIp": public,
            }
        }

    async def _container_name(self) -> str:
        """The configured container, else the task definition's first one (looked up once)."""
        if self.container_name is None:
            response = await self._call(
                "ecs", "describe_task_definition", taskDefinition=self.task_definition
            )
            definitions = response["taskDefinition"]["containerDefinitions"]
            self.container_name = str(definitions[0]["name"])
        return self.container_name

    async def _describe(self, task_arn: str) -> dict[str, Any] | None:
        response = await self._call("ecs", "describe_tasks", cluster=self.cluster, tasks=[task_arn])
        tasks = response.get("tasks") or []
        return tasks[0] if tasks else None

    async def check_status(self, execution_id: str) -> ExecutionStatus:
        task = await self._describe(execution_id)
        if task is None:
            return ExecutionStatus("not-found")
        if task.get("lastStatus") != "STOPPED":
            if self._past_deadline(execution_id, task):
                await self._stop(execution_id, TIMEOUT_REASON)
                return ExecutionStatus("exited", None, "timeout")
            return ExecutionStatus("running")
        return _stopped_status(task, await self._container_name())

    def _past_deadline(self, task_arn: str, task: dict[str, Any]) -> bool:
        launched = self._launches.get(task_arn)
        if launched is None:
            return False
        launched_at, timeout = launched
        started = task.get("startedAt")
        # Count from when the container started, when ECS says so, not from the request.
        begin = started.timestamp() if isinstance(started, datetime) else launched_at
        return time.time() > begin + timeout

    async def get_logs(self, execution_id: str) -> tuple[str, str]:
        """CloudWatch keeps one stream per container; stdout and stderr arrive merged in it."""
        if not self.log_group:
            return "", ""
        container = await self._container_name()
        stream = f"{self.log_stream_prefix}/{container}/{execution_id.rsplit('/', 1)[-1]}"
        return cap_log(await self._read_stream(stream)), ""

    async def _read_stream(self, stream: str) -> str:
        lines: list[str] = []
        params: dict[str, Any] = {
            "logGroupName": self.log_group,
            "logStreamName": stream,
            "startFromHead": True,
        }
        for _ in range(MAX_LOG_PAGES):
            try:
                page = await self._call("logs", "get_log_events", **params)
            except ExecutorResourceError:
                break  # the stream does not exist (yet): the task wrote nothing
            lines.extend(str(event.get("message", "")) for event in page.get("events", []))
            token = page.get("nextForwardToken")
            if not page.get("events") or not token or token == params.get("nextToken"):
                break
            params["nextToken"] = token
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines)

    async def harvest_job(self, job: ContainerJob) -> HarvestResult:
        execution_id = job.get_execution_identifier()
        task = await self._describe(execution_id)
        container = await self._container_name()
        status = (
            _stopped_status(task, container)
            if task is not None and task.get("lastStatus") == "STOPPED"
            else await self.check_status(execution_id)
        )
        stdout, stderr = await self.get_logs(execution_id)
        return HarvestResult(
            status=final_status(status.exit_code, status.reason),
            exit_code=status.exit_code,
            stdout=stdout,
            stderr=stderr,
            started_at=_datetime(task, "startedAt"),
            finished_at=_datetime(task, "stoppedAt") or utcnow(),
            reason=status.reason,
            metadata={"stop_code": task.get("stopCode", "")} if task else {},
        )

    async def cleanup(self, execution_id: str) -> bool:
        self._launches.pop(execution_id, None)
        task = await self._describe(execution_id)
        if task is None:
            return False
        if task.get("lastStatus") != "STOPPED":
            await self._stop(execution_id, "bulkjobs: cleanup")
        return True

    async def _stop(self, task_arn: str, reason: str) -> None:
        await self._call("ecs", "stop_task", cluster=self.cluster, task=task_arn, reason=reason)

    async def get_health_status(self) -> dict[str, Any]:
        async def check() -> str | None:
            response = await self._call("ecs", "describe_clusters", clusters=[self.cluster])
            clusters = response.get("clusters") or []
            if not clusters or clusters[0].get("status") != "ACTIVE":
                return f"fargate: cluster {self.cluster} is not active"
            return None

        return await probe_health(check)

    async def get_capabilities(self) -> dict[str, Any]:
        return {
            "supports_resource_limits": True,
            "supports_networking": True,
            "supports_persistent_storage": False,
            "supports_secrets": True,
            "supports_gpu": False,
            "supports_scaling": True,
            "image": "fixed by the host's task definition; job.docker_image is not applied",
            "logs": "CloudWatch awslogs stream; stdout and stderr arrive merged in stdout"
            if self.log_group
            else "none: no log_group configured",
            "timeout": "enforced by this executor when it checks a task it launched",
            "exit_code": "the essential container's exit code",
        }

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await asyncio.to_thread(client.close)


def _container_override(name: str, job: ContainerJob, env: dict[str, str]) -> dict[str, Any]:
    override: dict[str, Any] = {
        "name": name,
        "environment": [{"name": key, "value": value} for key, value in env.items()],
    }
    if job.command:
        override["command"] = shlex.split(job.command)
    if job.memory_limit:
        override["memory"] = job.memory_limit
    if job.cpu_limit:
        override["cpu"] = int(job.cpu_limit * 1024)  # ECS counts CPU in 1/1024 vCPU units
    return override


def _launch_failure(failures: list[dict[str, Any]]) -> ExecutorError:
    reasons = "; ".join(str(f.get("reason", "")) + f" {f.get('detail', '')}" for f in failures)
    transient = any("RESOURCE" in str(f.get("reason", "")) for f in failures)
    message = f"fargate: run_task started no task ({reasons.strip() or 'no reason given'})"
    return ExecutorError(message, transient=transient)


def _stopped_status(task: dict[str, Any], container_name: str) -> ExecutionStatus:
    containers = task.get("containers") or []
    container = next((c for c in containers if c.get("name") == container_name), None)
    container = container or (containers[0] if containers else {})
    exit_code = container.get("exitCode")
    stopped = f"{task.get('stoppedReason', '')} {container.get('reason', '')}"
    if TIMEOUT_REASON in stopped:
        return ExecutionStatus("exited", exit_code, "timeout")
    if "OutOfMemory" in stopped:
        return ExecutionStatus("exited", exit_code, "out of memory")
    if exit_code is None:
        # The container never ran (image pull failure, no capacity, stopped before start).
        return ExecutionStatus("failed", None, stopped.strip() or str(task.get("stopCode", "")))
    return ExecutionStatus("exited", int(exit_code))


def _datetime(task: dict[str, Any] | None, key: str) -> datetime | None:
    value = task.get(key) if task else None
    return value if isinstance(value, datetime) else None


def translate_error(exc: Exception, operation: str, secrets: list[str]) -> ExecutorError:
    """A botocore error as one of ours; messages never carry configured secrets."""
    if isinstance(exc, EndpointConnectionError):
        return ExecutorConnectionError(scrub(f"fargate: {operation}: {exc}", secrets))
    if isinstance(exc, NoCredentialsError):
        return ExecutorConfigurationError(f"fargate: {operation}: no AWS credentials found")
    if not isinstance(exc, ClientError):
        return ExecutorError(scrub(f"fargate: {operation}: {exc}", secrets), transient=True)
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    message = scrub(f"fargate: {operation}: {code}: {error.get('Message', '')}", secrets)
    if code in CONFIG_CODES:
        return ExecutorConfigurationError(message)
    if code == "ResourceNotFoundException":
        return ExecutorResourceError(message)
    return ExecutorError(message, transient=code in TRANSIENT_CODES or status >= 500)
