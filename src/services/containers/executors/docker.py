"""DockerExecutor: runs a job as a container on a Docker engine, through the Docker SDK.

The API version is negotiated with the engine (never pinned). Containers get memory (swap
off), CPU, pids and network limits and labels that mark them as ours, so an orphan left by a
crashed processor can be found and removed. The job's timeout is a label too: whichever
processor checks the container enforces it, even one that did not launch it. For TLS
engines the client is built from executor_config alone; it never reads DOCKER_CERT_PATH or
DOCKER_TLS_VERIFY from the environment.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import socket
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import docker
import docker.constants
import docker.errors
import docker.tls
import requests.exceptions
from docker.models.containers import Container
from pydantic import Field

from src.services.containers.executors.base import (
    ExecutionStatus,
    HarvestResult,
    LaunchResult,
    cap_log,
    final_status,
)
from src.services.containers.executors.config import ExecutorConfig, Text
from src.services.containers.executors.errors import (
    ExecutorConfigurationError,
    ExecutorConnectionError,
    ExecutorError,
    ExecutorResourceError,
)
from src.services.domain.containers import ContainerJob, ExecutorHost

T = TypeVar("T")

LABEL = "bulkjobs.managed"
JOB_LABEL = "bulkjobs.job_id"
TIMEOUT_LABEL = "bulkjobs.timeout_seconds"
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
DEFAULT_PIDS_LIMIT = 256
#: Exit code of a SIGKILLed process (OOM kills included).
KILLED = 137
OOM_FLAG_POLLS = 30
#: Log lines read from the engine per stream (cap_log then keeps the last 256 KiB).
LOG_TAIL_LINES = 20_000
#: Seconds a stopping container gets between SIGTERM and SIGKILL.
STOP_GRACE_S = 2


class DockerConfig(ExecutorConfig):
    #: Engine URL when the host has no connection_string.
    base_url: Text | None = None
    client_cert: Text | None = None
    client_key: Text | None = None
    ca_cert: Text | None = None
    #: Seconds one Docker API call may take.
    api_timeout_s: int = Field(30, gt=0, le=3600)
    #: Processes one container may run (-1: no limit).
    pids_limit: int = Field(DEFAULT_PIDS_LIMIT, ge=-1, le=4_194_304)


class DockerExecutor:
    executor_type = "docker"
    config_model = DockerConfig

    def __init__(self, host: ExecutorHost) -> None:
        self.host = host
        self.config = host.executor_config
        self._client: docker.DockerClient | None = None

    def _base_url(self) -> str:
        url = self.host.connection_string or str(self.config.get("base_url") or DEFAULT_SOCKET)
        if self.host.host_type == "unix" and url.startswith("/"):
            url = f"unix://{url}"
        return url

    def _tls(self) -> docker.tls.TLSConfig | bool:
        if not self.host.tls_enabled:
            return False
        cert, key = self.config.get("client_cert"), self.config.get("client_key")
        ca = self.config.get("ca_cert")
        if self.host.tls_verify and not ca:
            raise ExecutorConfigurationError(
                f"host {self.host.name}: tls_verify needs executor_config.ca_cert"
            )
        return docker.tls.TLSConfig(
            client_cert=(cert, key) if cert and key else None,
            ca_cert=ca if self.host.tls_verify else None,
            verify=bool(ca) if self.host.tls_verify else False,
        )

    def _connect(self) -> docker.DockerClient:
        if self._client is None:
            self._client = self._negotiated_client()
        return self._client

    def _check_unix_socket(self) -> None:
        """The SDK leaks the socket of a failed unix connect; probe it ourselves first."""
        url = self._base_url()
        if not url.startswith(("unix://", "http+unix://")):
            return
        path = url.split("://", 1)[1]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(5)
            try:
                probe.connect(path)
            except OSError as exc:
                raise _connection_error(self.host, exc) from None

    def _negotiated_client(self) -> docker.DockerClient:
        """A client speaking the engine's API version, as version="auto" would -- except
        that "auto" leaks its socket when the engine is down, so negotiate here."""
        self._check_unix_socket()
        try:
            client = docker.DockerClient(
                base_url=self._base_url(),
                version=docker.constants.MINIMUM_DOCKER_API_VERSION,
                tls=self._tls(),
                timeout=int(self.config.get("api_timeout_s", 30)),
            )
        except docker.errors.DockerException as exc:
            raise _connection_error(self.host, exc) from None
        try:
            server_version = client.api.version(api_version=False)["ApiVersion"]
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            client.close()
            raise _connection_error(self.host, exc) from None
        client.api._version = server_version
        return client

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking SDK call in a thread, mapping transport failures."""

        def call() -> T:
            try:
                return fn(*args, **kwargs)
            except requests.exceptions.ConnectionError as exc:
                raise _connection_error(self.host, exc) from None
            except docker.errors.APIError:
                raise  # an HTTPError too, but the callers handle these themselves
            except requests.exceptions.RequestException as exc:  # timeouts and the like
                raise ExecutorError(
                    f"docker: {type(exc).__name__}: {exc}", transient=True
                ) from None

        return await asyncio.to_thread(call)

    async def _container(self, execution_id: str) -> Container | None:
        client = await asyncio.to_thread(self._connect)
        try:
            return await self._call(client.containers.get, execution_id)
        except docker.errors.NotFound:
            return None

    async def launch_job(self, job: ContainerJob, env: dict[str, str]) -> LaunchResult:
        client = await asyncio.to_thread(self._connect)
        await self._ensure_image(client, job.docker_image)
        options = self._run_options(job, env)
        try:
            container = await self._call(client.containers.run, job.docker_image, **options)
        except docker.errors.ImageNotFound:
            raise ExecutorResourceError(f"image {job.docker_image} not found") from None
        except docker.errors.APIError as exc:
            raise _api_error(exc) from None
        return LaunchResult(str(container.id), {"container_name": options["name"]})

    async def _ensure_image(self, client: docker.DockerClient, image: str) -> None:
        try:
            await self._call(client.images.get, image)
            return
        except docker.errors.ImageNotFound:
            if not self.host.auto_pull_images:
                raise ExecutorResourceError(
                    f"image {image} is not on host {self.host.name} and auto_pull_images is off"
                ) from None
        except docker.errors.APIError as exc:
            raise _api_error(exc) from None
        try:
            await self._call(client.images.pull, image)
        except docker.errors.APIError as exc:
            raise ExecutorResourceError(
                f"image {image} could not be pulled: {_short(exc)}"
            ) from None

    def _run_options(self, job: ContainerJob, env: dict[str, str]) -> dict[str, Any]:
        networks = job.get_network_names()
        options: dict[str, Any] = {
            "command": ["/bin/sh", "-c", job.command] if job.command else None,
            "detach": True,
            "environment": env,
            "labels": {
                LABEL: "true",
                JOB_LABEL: job.id,
                TIMEOUT_LABEL: str(job.timeout_seconds),
            },
            "name": f"bulkjobs-{job.id[:24]}-{uuid.uuid4().hex[:6]}",
            "pids_limit": int(self.config.get("pids_limit", DEFAULT_PIDS_LIMIT)),
            # No network unless the job asks for one: a batch job rarely needs it.
            "network_mode": networks[0] if networks else "none",
            "working_dir": job.working_directory or None,
        }
        if job.memory_limit:
            options["mem_limit"] = f"{job.memory_limit}m"
            options["memswap_limit"] = f"{job.memory_limit}m"  # no swap: OOM is OOM
        if job.cpu_limit:
            options["nano_cpus"] = int(job.cpu_limit * 1_000_000_000)
        return options

    async def check_status(self, execution_id: str) -> ExecutionStatus:
        container = await self._container(execution_id)
        if container is None:
            return ExecutionStatus("not-found")
        state = container.attrs.get("State", {})
        if state.get("Status") in ("created", "running", "restarting", "paused"):
            if _past_deadline(container):
                await self._stop(container)
                return ExecutionStatus("exited", None, "timeout")
            return ExecutionStatus("running")
        if state.get("Status") == "dead":
            return ExecutionStatus("failed", state.get("ExitCode"), state.get("Error") or "dead")
        return _exit_status(container)

    async def stop(self, execution_id: str) -> None:
        """Stop the container, keeping it (and its logs) for the harvest."""
        container = await self._container(execution_id)
        if container is not None:
            await self._stop(container)

    async def _stop(self, container: Container) -> None:
        try:
            await self._call(container.stop, timeout=STOP_GRACE_S)
        except docker.errors.NotFound:
            return

    async def _wait_for_oom_flag(
        self, container: Container, status: ExecutionStatus
    ) -> ExecutionStatus:
        """The engine records an OOM kill from an event that can land just after the exit;
        a SIGKILLed container gets a moment for the flag to appear."""
        for _ in range(OOM_FLAG_POLLS):
            await asyncio.sleep(0.1)
            await self._call(container.reload)
            if _state(container).get("OOMKilled"):
                return _exit_status(container)
        return status

    async def get_logs(self, execution_id: str) -> tuple[str, str]:
        container = await self._container(execution_id)
        if container is None:
            return "", ""
        # The last lines only: the engine would otherwise send a chatty container's whole log.
        out = await self._call(container.logs, stdout=True, stderr=False, tail=LOG_TAIL_LINES)
        err = await self._call(container.logs, stdout=False, stderr=True, tail=LOG_TAIL_LINES)
        return cap_log(out.decode(errors="replace")), cap_log(err.decode(errors="replace"))

    async def harvest_job(self, job: ContainerJob) -> HarvestResult:
        execution_id = job.get_execution_identifier()
        container = await self._container(execution_id)
        if container is None:
            return HarvestResult("failed", None, "", "", reason="container not found")
        status = await self.check_status(execution_id)
        if status.exit_code == KILLED and not status.reason:
            status = await self._wait_for_oom_flag(container, status)
        if status.reason == "timeout":
            await self._call(container.reload)  # stopped just now: read its final state
            status = ExecutionStatus("exited", _state(container).get("ExitCode"), "timeout")
        stdout, stderr = await self.get_logs(execution_id)
        state = _state(container)
        started = _parse_time(state.get("StartedAt"))
        finished = _parse_time(state.get("FinishedAt"))
        if started and finished and finished < started:
            finished = started  # Docker may stamp a very short run's start after its end
        return HarvestResult(
            status=final_status(status.exit_code, status.reason),
            exit_code=status.exit_code,
            stdout=stdout,
            stderr=stderr,
            started_at=started,
            finished_at=finished,
            reason=status.reason,
            metadata={"oom_killed": bool(state.get("OOMKilled"))},
        )

    async def cleanup(self, execution_id: str) -> bool:
        container = await self._container(execution_id)
        if container is None:
            return False
        try:
            await self._call(container.remove, force=True)
        except docker.errors.NotFound:
            return False
        return True

    async def list_managed(self) -> list[dict[str, str]]:
        """Our containers on this engine (for orphan cleanup): execution id and job id."""
        client = await asyncio.to_thread(self._connect)
        containers = await self._call(
            client.containers.list, all=True, filters={"label": f"{LABEL}=true"}
        )
        return [
            {"execution_id": str(c.id), "job_id": c.labels.get(JOB_LABEL, "")} for c in containers
        ]

    async def get_health_status(self) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            client = await asyncio.to_thread(self._connect)
            version = await self._call(client.version)
        except (ExecutorError, docker.errors.DockerException) as exc:
            return {
                "healthy": False,
                "error": str(exc),
                "response_time": time.perf_counter() - started,
            }
        return {
            "healthy": True,
            "error": None,
            "response_time": time.perf_counter() - started,
            "version": version.get("Version"),
            "api_version": version.get("ApiVersion"),
        }

    async def get_capabilities(self) -> dict[str, Any]:
        return {
            "supports_resource_limits": True,
            "supports_networking": True,
            "supports_persistent_storage": False,
            "supports_secrets": False,
            "supports_gpu": False,
            "supports_scaling": False,
            "isolation": "container: own filesystem, pid and network namespaces; memory, CPU"
            " and pids limited; no network unless the job names one",
        }

    async def aclose(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None


def _state(container: Container) -> dict[str, Any]:
    state: dict[str, Any] = container.attrs.get("State", {})
    return state


def _exit_status(container: Container) -> ExecutionStatus:
    state = _state(container)
    code = state.get("ExitCode")
    if _ran_past_deadline(container):
        return ExecutionStatus("exited", code, "timeout")
    if state.get("OOMKilled"):
        return ExecutionStatus("exited", code, "out of memory")
    return ExecutionStatus("exited", code)


def _past_deadline(container: Container, now: float | None = None) -> bool:
    timeout = container.labels.get(TIMEOUT_LABEL)
    started = _parse_time(_state(container).get("StartedAt"))
    if not timeout or started is None:
        return False
    return (now or time.time()) >= started.timestamp() + float(timeout)


def _ran_past_deadline(container: Container) -> bool:
    """Stopped for its timeout: it ran the whole timeout (the label survives restarts)."""
    finished = _parse_time(_state(container).get("FinishedAt"))
    return finished is not None and _past_deadline(container, finished.timestamp())


DOCKER_TIME = re.compile(r"^([^.]+?)(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})$")


def _parse_time(value: str | None) -> datetime | None:
    """Docker's RFC 3339 times carry nanoseconds, which fromisoformat rejects."""
    match = DOCKER_TIME.match(value or "")
    if match is None or value is None or value.startswith("0001-"):
        return None  # absent, or Docker's zero time for "not yet"
    head, fraction, zone = match.groups()
    zone = "+00:00" if zone == "Z" else zone
    return datetime.fromisoformat(f"{head}.{(fraction or '0')[:6]:0<6}{zone}")


def _short(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc)[:300]


def _api_error(exc: docker.errors.APIError) -> ExecutorError:
    transient = exc.status_code is None or exc.status_code >= 500
    return ExecutorError(f"docker: {_short(exc)}", transient=transient)


def _connection_error(host: ExecutorHost, exc: Exception) -> ExecutorConnectionError:
    # The SDK's message can be long and nested; the host name and the gist are enough.
    gist = shlex.quote(str(exc).splitlines()[0][:200]) if str(exc) else type(exc).__name__
    return ExecutorConnectionError(f"docker engine for host {host.name} unreachable: {gist}")
