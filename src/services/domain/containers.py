"""Container jobs, executor hosts and environment templates, with their rules.

Fields follow the container manager's API reference (plus the multi-executor fields); the
Django foreign keys become ids (`host_id`, `environment_template_id`, `created_by`).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from src.services.domain import utcnow
from src.services.errors import BulkJobError, Conflict, InvalidInput

ExecutorType = Literal["local", "docker", "cloudrun", "fargate", "scaleway", "mock"]
EXECUTOR_TYPES: tuple[ExecutorType, ...] = (
    "local",
    "docker",
    "cloudrun",
    "fargate",
    "scaleway",
    "mock",
)
EXECUTOR_NAMES = {
    "local": "Local process",
    "docker": "Docker",
    "cloudrun": "Google Cloud Run",
    "fargate": "AWS Fargate",
    "scaleway": "Scaleway Serverless Jobs",
    "mock": "Mock (testing)",
}
#: Executors that run where the service runs, so images from a localhost registry work.
LOCAL_EXECUTORS = frozenset({"local", "docker", "mock"})
#: Consecutive failures (health probes and launches that failed for the host's sake) that
#: take a host out of routing, unless BULKJOBS_HOST_FAILURE_THRESHOLD says otherwise.
MAX_HEALTH_FAILURES = 3
#: The host every fresh store has, so local container jobs need no set-up.
DEFAULT_LOCAL_HOST = {
    "id": "local",
    "name": "local",
    "executor_type": "local",
    "max_concurrent_jobs": 4,
}


class ContainerJobStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    LAUNCHING = "launching"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    RETRYING = "retrying"


S = ContainerJobStatus
TERMINAL_STATUSES = frozenset({S.COMPLETED, S.FAILED, S.TIMEOUT, S.CANCELLED})
#: Statuses in which a container may exist and must be stopped on cancel.
ACTIVE_STATUSES = frozenset({S.LAUNCHING, S.RUNNING})

#: Allowed transitions. pending -> queued when a processor claims the job; launching ->
#: retrying after a transient launch error, running -> retrying after an exit its exit retry
#: policy runs again; retrying -> queued for the next attempt.
#: Convex mirrors this table in convex/model/containers.ts.
TRANSITIONS: dict[ContainerJobStatus, frozenset[ContainerJobStatus]] = {
    S.PENDING: frozenset({S.QUEUED, S.LAUNCHING, S.RUNNING, S.CANCELLED, S.FAILED}),
    S.QUEUED: frozenset({S.LAUNCHING, S.CANCELLED, S.FAILED, S.PENDING}),
    S.LAUNCHING: frozenset({S.RUNNING, S.FAILED, S.RETRYING, S.CANCELLED, S.TIMEOUT, S.COMPLETED}),
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.TIMEOUT, S.CANCELLED, S.RETRYING}),
    S.RETRYING: frozenset({S.QUEUED, S.FAILED, S.CANCELLED}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.TIMEOUT: frozenset(),
    S.CANCELLED: frozenset(),
}


def check_transition(old: ContainerJobStatus | str, new: ContainerJobStatus | str) -> None:
    """Raise Conflict unless `old -> new` is allowed."""
    if ContainerJobStatus(new) not in TRANSITIONS[ContainerJobStatus(old)]:
        raise Conflict(f"a container job cannot go from {old} to {new}")


#: Seconds a bulk creation's reservation of jobs still to write lasts: a creator that died
#: midway holds its owner's quota no longer than this.
HOLD_TTL_S = 600.0


class ContainerQuota(BaseModel):
    """The per-user cap on unfinished container jobs, checked in the transaction that writes
    them: for each owner of the new jobs, unfinished jobs plus jobs reserved (by creations
    under way) plus the new ones may not pass `max_unfinished` (else
    ContainerQuotaExceeded, and nothing is written). A creation in several transactions
    passes the same `hold_id` to each: `hold` (> 0 on the first) reserves that many jobs
    for the calls that follow, which draw on the reservation instead of counting again, so
    no concurrent creation can take their room and the creation is refused whole or not
    at all. A reservation ends when used up, or after HOLD_TTL_S."""

    model_config = ConfigDict(frozen=True)

    max_unfinished: int = Field(ge=0)
    hold_id: str | None = None
    hold: int = Field(0, ge=0)


ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_env_text(text: str, field: str = "environment_variables_text") -> dict[str, str]:
    """KEY=value lines; `#` comments and blank lines skipped; `=` may appear in values."""
    variables: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not ENV_KEY.match(key):
            raise InvalidInput(field, f"line {number} is not KEY=value: {raw.strip()[:80]!r}")
        variables[key] = value.strip()
    return variables


def format_env_text(variables: dict[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in variables.items())


LOG_TIMESTAMP = re.compile(
    r"^\s*\[?\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?\]?\s?"
)


def strip_timestamps(text: str) -> str:
    """Log lines without a leading RFC 3339 / ISO timestamp (as docker logs adds)."""
    return "\n".join(LOG_TIMESTAMP.sub("", line, count=1) for line in text.splitlines())


SECRET_KEYS = re.compile(r"key|secret|token|password|credential|auth", re.IGNORECASE)


def redact(config: Any) -> Any:
    """A copy of an executor config with every secret-looking value replaced by ***."""
    if isinstance(config, dict):
        return {
            key: "***"
            if SECRET_KEYS.search(str(key)) and value not in (None, "")
            else redact(value)
            for key, value in config.items()
        }
    if isinstance(config, list):
        return [redact(item) for item in config]
    return config


class EnvironmentVariableTemplate(BaseModel):
    model_config = ConfigDict(validate_assignment=True)

    id: str
    name: str = Field(min_length=1, max_length=100)
    description: str = ""
    environment_variables_text: str = ""
    #: Executor types this template's jobs may run on; empty means all.
    supported_executors: list[ExecutorType] = []
    created_by: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    def get_environment_variables_dict(self) -> dict[str, str]:
        return parse_env_text(self.environment_variables_text)


class ExecutorHost(BaseModel):
    model_config = ConfigDict(validate_assignment=True)

    id: str
    name: str = Field(min_length=1, max_length=100)
    host_type: Literal["unix", "tcp"] = "unix"
    connection_string: str = ""
    tls_enabled: bool = False
    tls_verify: bool = False
    is_active: bool = True
    auto_pull_images: bool = True
    executor_type: ExecutorType = "docker"
    #: Executor settings (credentials, regions, limits); never shown unredacted.
    executor_config: dict[str, Any] = {}
    max_concurrent_jobs: int = Field(10, ge=1)
    weight: int = Field(100, ge=1, le=1000)
    current_job_count: int = Field(0, ge=0)
    cost_per_hour: float | None = Field(None, ge=0)
    cost_per_job: float | None = Field(None, ge=0)
    #: Seconds from launch to running, on average.
    average_startup_time: float | None = Field(None, ge=0)
    #: When the host's health was last probed (or checked by hand), whatever the result.
    last_health_check: datetime | None = None
    #: Consecutive failures: failed probes, and launches that failed for the host's sake. A
    #: probe that succeeds resets it.
    health_check_failures: int = Field(0, ge=0)
    #: False once health_check_failures reached the failure threshold: routing and failover
    #: skip the host until a probe succeeds.
    healthy: bool = True
    #: Why the last probe or launch failed; None after a probe that succeeded.
    last_health_error: str | None = None
    #: When the next periodic probe is due; a worker that claims it moves it one interval on.
    next_probe_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    def is_available(self) -> bool:
        return self.is_active and self.current_job_count < self.max_concurrent_jobs and self.healthy

    def is_healthy(self) -> bool:
        return self.healthy

    def get_capacity_info(self) -> dict[str, Any]:
        return {
            "current_jobs": self.current_job_count,
            "max_jobs": self.max_concurrent_jobs,
            "available_slots": max(0, self.max_concurrent_jobs - self.current_job_count),
            "utilization_percent": self.current_job_count / self.max_concurrent_jobs * 100,
        }

    def get_display_name(self) -> str:
        return f"{self.name} ({EXECUTOR_NAMES[self.executor_type]})"

    def public_config(self) -> dict[str, Any]:
        redacted: dict[str, Any] = redact(self.executor_config)
        return redacted

    def max_memory_mb(self) -> int | None:
        value = self.executor_config.get("max_memory_mb")
        return int(value) if value else None

    def max_cpu(self) -> float | None:
        value = self.executor_config.get("max_cpu")
        return float(value) if value else None

    def __str__(self) -> str:
        suffix = f" ({self.executor_type})" if self.executor_type != "docker" else ""
        return f"{self.name}{suffix} ({self.connection_string})"

    def __repr__(self) -> str:
        # The default repr would print executor_config, credentials included.
        return f"ExecutorHost(id={self.id!r}, name={self.name!r}, type={self.executor_type!r})"


#: Exit codes an exit retry policy may name (0 is success; signals read as 128 + n, or -n).
EXIT_CODES = (-255, 255)


class ExitRetryPolicy(BaseModel):
    """Runs a job again when its container exits with one of `retry_on_exit_codes`: up to
    `max_retries` more runs, the n-th after backoff(n - 1, backoff_s) seconds (doubling, with
    jitter). Apart from the job's own `max_retries`, which retries failed launches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retry_on_exit_codes: list[int] = Field(min_length=1, max_length=50)
    max_retries: int = Field(3, ge=1, le=10)
    #: Seconds before the first rerun; each later one waits about twice as long (<= 30 s).
    backoff_s: float = Field(1.0, gt=0, le=30)

    @field_validator("retry_on_exit_codes")
    @classmethod
    def _non_zero(cls, codes: list[int]) -> list[int]:
        low, high = EXIT_CODES
        for code in codes:
            if code == 0 or not low <= code <= high:
                raise ValueError(f"{code} is not a failing exit code (non-zero, {low} to {high})")
        return codes


class ExitAttempt(BaseModel):
    """One run of a job that has an exit retry policy, as it ended."""

    model_config = ConfigDict(frozen=True)

    #: 1 for the first run.
    attempt: int = Field(ge=1)
    #: completed, failed or timeout.
    status: ContainerJobStatus
    exit_code: int | None
    #: Why it failed (the executor's reason, else the end of stderr); empty when it did not.
    error: str = ""
    started_at: datetime | None = None
    finished_at: datetime
    #: Seconds waited before the next run; None when no run followed.
    retry_in_s: float | None = None


class TemplateNotLoaded(BulkJobError):
    """A job's own environment template was asked for before the service loaded it."""


class ContainerJob(BaseModel):
    model_config = ConfigDict(validate_assignment=True)

    id: str
    host_id: str | None = None
    name: str = ""
    description: str = ""
    status: ContainerJobStatus = ContainerJobStatus.PENDING
    docker_image: str = ""
    command: str = ""
    working_directory: str = ""
    #: Megabytes.
    memory_limit: int | None = Field(None, gt=0)
    cpu_limit: float | None = Field(None, ge=0.1, le=32)
    timeout_seconds: int = Field(3600, gt=0)
    environment_template_id: str | None = None
    override_environment: str = ""
    network_configuration: list[dict[str, Any]] = []
    execution_id: str = ""
    exit_code: int | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    #: Bytes.
    max_memory_usage: int | None = None
    cpu_usage_percent: float | None = None
    stdout_log: str = ""
    stderr_log: str = ""
    docker_log: str = ""
    created_by: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    executor_type: ExecutorType = "docker"
    external_execution_id: str = ""
    executor_metadata: dict[str, Any] = {}
    preferred_executor: ExecutorType | None = None
    routing_reason: str = ""
    estimated_cost: float | None = None
    actual_cost: float | None = None
    priority: int = Field(0, ge=-100, le=100)
    max_retries: int = Field(0, ge=0, le=10)
    retry_count: int = Field(0, ge=0)
    status_message: str = ""
    #: The bulk job (and item) this container job runs for, if any.
    bulk_job_id: str | None = None
    item_key: str | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    #: (template id, the template or None if it is gone) once the service loaded the job's own
    #: template; never stored or sent (templates hold shared secrets).
    _template: tuple[str, EnvironmentVariableTemplate | None] | None = PrivateAttr(None)
    #: Claims by processors so far; a hand-back (a processor stopping cleanly) does not count.
    attempts: int = Field(0, ge=0)
    #: Why the last processor attempt failed (the job is claimed again after a back-off).
    last_error: str | None = None
    #: Created by a caller who is not an admin: it runs only on hosts that isolate it
    #: (`isolation_refusal`), whoever moves, restarts or re-routes it later.
    untrusted: bool = False
    #: The caller chose the host: failover never moves the job elsewhere.
    host_pinned: bool = False
    #: Runs the job again after some non-zero exits (None: a failing exit is final).
    exit_retry: ExitRetryPolicy | None = None
    #: Each run so far of a job with an exit retry policy.
    exit_attempts: list[ExitAttempt] = []

    @property
    def duration(self) -> timedelta | None:
        if self.started_at is None:
            return None
        return (self.completed_at or utcnow()) - self.started_at

    @property
    def is_terminal_status(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def clean_output(self) -> str:
        return strip_timestamps(self.stdout_log).strip()

    @property
    def parsed_output(self) -> Any:
        """The output as JSON (whole, or its last line), else None."""
        text = self.clean_output
        for candidate in (text, text.splitlines()[-1] if text else ""):
            try:
                return orjson.loads(candidate) if candidate else None
            except orjson.JSONDecodeError:
                continue
        return None

    def get_override_environment_variables_dict(self) -> dict[str, str]:
        return parse_env_text(self.override_environment, "override_environment")

    def get_all_environment_variables(
        self, template: EnvironmentVariableTemplate | None = None
    ) -> dict[str, str]:
        """The template's variables, then the job's overrides on top. Without `template`, the
        job's own, as `container_jobs` loaded it (create_job, get_job, list_jobs and
        resolve_template hand jobs out with it); TemplateNotLoaded otherwise."""
        if template is None and self.environment_template_id is not None:
            template = self._own_template()
        base = template.get_environment_variables_dict() if template else {}
        return base | self.get_override_environment_variables_dict()

    def attach_template(self, template: EnvironmentVariableTemplate | None) -> ContainerJob:
        """Keep the job's own template (None: it no longer exists); returns the job."""
        if self.environment_template_id is not None:
            self._template = (self.environment_template_id, template)
        return self

    def _own_template(self) -> EnvironmentVariableTemplate | None:
        if self._template is None or self._template[0] != self.environment_template_id:
            raise TemplateNotLoaded(
                f"job {self.id} uses template {self.environment_template_id}, which is not"
                " loaded: pass it, or get the job through container_jobs (or await"
                " container_jobs.resolve_template(job))"
            )
        return self._template[1]

    def get_network_names(self) -> list[str]:
        return [
            str(net["network_name"])
            for net in self.network_configuration
            if net.get("network_name")
        ]

    def get_execution_identifier(self) -> str:
        if self.executor_type == "docker":
            return self.execution_id
        return self.external_execution_id or self.execution_id

    def set_execution_identifier(self, execution_id: str) -> None:
        if self.executor_type == "docker":
            self.execution_id = execution_id
        else:
            self.external_execution_id = execution_id

    def can_use_executor(
        self, executor_type: str, template: EnvironmentVariableTemplate | None = None
    ) -> bool:
        if self.preferred_executor:
            return self.preferred_executor == executor_type
        if template is not None and template.supported_executors:
            return executor_type in template.supported_executors
        # A cloud executor cannot pull from a registry on this machine.
        return executor_type in LOCAL_EXECUTORS or not is_private_image(self.docker_image)

    def estimate_resources(self) -> dict[str, Any]:
        return {
            "memory_mb": self.memory_limit or 512,
            "cpu_cores": self.cpu_limit or 1.0,
            "timeout_seconds": self.timeout_seconds,
            "storage_required": bool(self.working_directory),
        }

    def __str__(self) -> str:
        suffix = f" ({self.executor_type})" if self.executor_type != "docker" else ""
        return f"{self.name or self.docker_image} ({self.status}){suffix}"


def runs_untrusted(host: ExecutorHost) -> bool:
    """Whether a non-admin's job may run on the host: the local executor isolates nothing,
    so only when its config says `allow_untrusted_jobs`."""
    return host.executor_type != "local" or bool(host.executor_config.get("allow_untrusted_jobs"))


def isolation_refusal(host: ExecutorHost, untrusted: bool) -> str | None:
    """Why `host` may not run a job (a non-admin's when `untrusted`), or None when it may.

    The one host-assignment rule: creation, routing, migration, restart, retry and failover
    all ask it, and so do both stores when they write a job's host."""
    if not untrusted or runs_untrusted(host):
        return None
    return (
        f"host {host.name} runs commands without isolation (local executor) and this is a"
        " non-admin's job; only admins' jobs may run there, unless the host's executor_config"
        " sets allow_untrusted_jobs"
    )


def is_private_image(image: str) -> bool:
    """An image from a registry on this machine, which a cloud executor cannot pull."""
    registry = image.split("/", 1)[0] if "/" in image else ""
    return registry.startswith(("localhost", "127.0.0.1", "[::1]"))


class ContainerJobSpec(BaseModel):
    """Validated arguments of create_job; errors name the field."""

    model_config = ConfigDict(extra="forbid")

    docker_image: str = Field(min_length=1, max_length=500)
    command: str = Field("", max_length=100_000)
    name: str = Field("", max_length=200)
    description: str = Field("", max_length=10_000)
    memory_limit: int | None = Field(None, gt=0, le=1_048_576)
    cpu_limit: float | None = Field(None, ge=0.1, le=32)
    timeout_seconds: int = Field(3600, gt=0, le=7 * 24 * 3600)
    working_directory: str = Field("", max_length=500)
    override_environment: str = Field("", max_length=100_000)
    network_configuration: list[dict[str, Any]] = Field(default_factory=list, max_length=10)
    preferred_executor: ExecutorType | None = None
    priority: int = Field(0, ge=-100, le=100)
    max_retries: int = Field(0, ge=0, le=10)
    exit_retry: ExitRetryPolicy | None = None
    bulk_job_id: str | None = None
    item_key: str | None = Field(None, max_length=500)


def check_host_limits(spec: ContainerJobSpec, host: ExecutorHost) -> None:
    """Limits must fit the host's maxima (executor_config max_memory_mb / max_cpu)."""
    max_memory, max_cpu = host.max_memory_mb(), host.max_cpu()
    if max_memory and spec.memory_limit and spec.memory_limit > max_memory:
        raise InvalidInput(
            "memory_limit", f"{spec.memory_limit} MB exceeds {host.name}'s {max_memory} MB"
        )
    if max_cpu and spec.cpu_limit and spec.cpu_limit > max_cpu:
        raise InvalidInput("cpu_limit", f"{spec.cpu_limit} exceeds {host.name}'s {max_cpu} CPUs")
