"""HTTP routes for container jobs (owner or admin) and executor hosts and templates (admin).

Hosts are shown with secret-looking executor_config values replaced by ***. A non-admin's
container jobs may not run on the local executor, which isolates nothing.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from src.routes.deps import AdminUser, Containers, CurrentUser, owner_filter
from src.routes.validation import JsonRoute
from src.services.domain.containers import (
    ContainerJob,
    ContainerJobStatus,
    EnvironmentVariableTemplate,
    ExecutorHost,
    ExecutorType,
    ExitRetryPolicy,
)

router = APIRouter(route_class=JsonRoute, tags=["container jobs"])
admin_router = APIRouter(route_class=JsonRoute, tags=["executor hosts and templates"])


EnvKey = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Name = Annotated[str, Field(min_length=1, max_length=100)]
#: Fields of a job too large for lists; GET /container-jobs/{id}/logs returns the logs.
LOG_FIELDS = {"stdout_log", "stderr_log", "docker_log"}


class ContainerJobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str = Field(min_length=1, max_length=500)
    command: str = Field("", max_length=100_000)
    name: str = Field("", max_length=200)
    description: str = Field("", max_length=10_000)
    environment_template: str | None = Field(None, max_length=100)
    environment_vars: dict[EnvKey, Annotated[str, Field(max_length=10_000)]] = Field(
        default_factory=dict, max_length=200
    )
    memory_limit: int | None = Field(None, gt=0, le=1_048_576, description="MB")
    cpu_limit: float | None = Field(None, ge=0.1, le=32)
    timeout_seconds: int = Field(3600, gt=0, le=7 * 24 * 3600)
    working_directory: str = Field("", max_length=500)
    network_configuration: list[dict[str, Any]] = Field(default_factory=list, max_length=10)
    #: A host id or name; routing picks one when absent.
    host: str | None = Field(None, max_length=100)
    executor_type: ExecutorType | None = None
    preferred_executor: ExecutorType | None = None
    priority: int = Field(0, ge=-100, le=100)
    #: Retries of a launch that failed for a transient reason (an executor error).
    max_retries: int = Field(0, ge=0, le=10)
    #: Runs the container again after one of these non-zero exits, with its own budget.
    exit_retry: ExitRetryPolicy | None = None


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("cancelled by user", max_length=500)


class Cancelled(BaseModel):
    job_id: str
    cancelled: bool
    status: str


class Logs(BaseModel):
    stdout: str
    stderr: str
    status: str


def job_view(job: ContainerJob) -> dict[str, Any]:
    return job.model_dump(mode="json", exclude=LOG_FIELDS | {"lease_owner", "lease_expires_at"})


@router.post("/container-jobs", status_code=201)
async def create_container_job(
    body: ContainerJobCreate, user: CurrentUser, service: Containers
) -> dict[str, Any]:
    """Create a container job; the processor launches it. Errors name the field."""
    fields = body.model_dump(
        exclude={
            "image",
            "command",
            "name",
            "environment_template",
            "environment_vars",
            "host",
            "executor_type",
        }
    )
    job = await service.create_job(
        body.image,
        body.command,
        body.name,
        user=user.user_id,
        environment_template=body.environment_template,
        environment_vars=body.environment_vars,
        host=body.host,
        executor_type=body.executor_type,
        trusted=user.is_admin,
        limited=not user.is_admin,  # admins are not held to the per-user quota
        **fields,
    )
    return job_view(job)


@router.get("/container-jobs")
async def list_container_jobs(
    user: CurrentUser,
    service: Containers,
    status: ContainerJobStatus | None = None,
    host: Annotated[str | None, Query(max_length=100)] = None,
    bulk_job_id: Annotated[str | None, Query(max_length=100)] = None,
    created_by: Annotated[str | None, Query(max_length=200, description="admins only")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[dict[str, Any]]:
    """Your container jobs (an admin's: everyone's, or `created_by`'s), newest first."""
    owner = created_by if user.is_admin else owner_filter(user)
    jobs = await service.list_jobs(
        status=status.value if status else None,
        host=host,
        user=owner,
        bulk_job_id=bulk_job_id,
        limit=limit,
    )
    return [job_view(job) for job in jobs]


@router.get("/container-jobs/{job_id}")
async def get_container_job(job_id: str, user: CurrentUser, service: Containers) -> dict[str, Any]:
    return job_view(await service.get_job(job_id, owner_filter(user)))


@router.get("/container-jobs/{job_id}/logs", response_model=Logs)
async def get_container_logs(job_id: str, user: CurrentUser, service: Containers) -> Logs:
    """stdout and stderr: live while the job runs, stored once it has ended."""
    return Logs.model_validate(await service.get_logs(job_id, owner_filter(user)))


@router.post("/container-jobs/{job_id}/cancel", response_model=Cancelled)
async def cancel_container_job(
    job_id: str, user: CurrentUser, service: Containers, body: CancelBody | None = None
) -> Cancelled:
    """Cancel the job and stop its container; `cancelled` is false if it had already ended."""
    job = await service.get_job(job_id, owner_filter(user))
    done = await service.cancel_job(job.id, owner_filter(user), (body or CancelBody()).reason)
    job = await service.get_job(job.id, owner_filter(user))
    return Cancelled(job_id=job.id, cancelled=done, status=job.status.value)


class HostCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    executor_type: ExecutorType
    host_type: Literal["unix", "tcp"] = "unix"
    connection_string: str = Field("", max_length=500)
    tls_enabled: bool = False
    tls_verify: bool = False
    is_active: bool = True
    auto_pull_images: bool = True
    executor_config: dict[str, Any] = Field(default_factory=dict, max_length=100)
    max_concurrent_jobs: int = Field(10, ge=1, le=10_000)
    weight: int = Field(100, ge=1, le=1000)
    cost_per_hour: float | None = Field(None, ge=0)
    cost_per_job: float | None = Field(None, ge=0)


class _Patch(BaseModel):
    """A partial update: absent fields stay as they are; null only where a field may be
    empty (NULLABLE)."""

    model_config = ConfigDict(extra="forbid")
    NULLABLE: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _no_nulls(self) -> _Patch:
        for name in self.model_fields_set:
            if getattr(self, name) is None and name not in self.NULLABLE:
                raise ValueError(f"{name} may not be null")
        return self


class HostUpdate(_Patch):
    NULLABLE = frozenset({"cost_per_hour", "cost_per_job"})

    name: Name | None = None
    connection_string: str | None = Field(None, max_length=500)
    tls_enabled: bool | None = None
    tls_verify: bool | None = None
    is_active: bool | None = None
    auto_pull_images: bool | None = None
    executor_config: dict[str, Any] | None = Field(None, max_length=100)
    max_concurrent_jobs: int | None = Field(None, ge=1, le=10_000)
    weight: int | None = Field(None, ge=1, le=1000)
    cost_per_hour: float | None = Field(None, ge=0)
    cost_per_job: float | None = Field(None, ge=0)


def host_view(host: ExecutorHost) -> dict[str, Any]:
    view = host.model_dump(mode="json")
    view["executor_config"] = host.public_config()
    view["display_name"] = host.get_display_name()
    view["capacity"] = host.get_capacity_info()
    view["is_available"] = host.is_available()
    return view


@admin_router.get("/hosts")
async def list_hosts(
    _: AdminUser, service: Containers, active_only: bool = False
) -> list[dict[str, Any]]:
    store = await service.store()
    return [host_view(host) for host in await store.host_list(active_only=active_only)]


@admin_router.post("/hosts", status_code=201)
async def create_host(body: HostCreate, _: AdminUser, service: Containers) -> dict[str, Any]:
    return host_view(await service.create_host(**body.model_dump()))


@admin_router.get("/hosts/{host_id}")
async def get_host(host_id: str, _: AdminUser, service: Containers) -> dict[str, Any]:
    return host_view(await service.get_host(host_id))


@admin_router.patch("/hosts/{host_id}")
async def update_host(
    host_id: str, body: HostUpdate, _: AdminUser, service: Containers
) -> dict[str, Any]:
    fields = body.model_dump(exclude_unset=True)
    return host_view(await service.update_host(host_id, **fields))


@admin_router.post("/hosts/{host_id}/health-check")
async def check_host_health(host_id: str, _: AdminUser, service: Containers) -> dict[str, Any]:
    """Probe the host now and record the result; BULKJOBS_HOST_FAILURE_THRESHOLD failures
    in a row take it out of routing until a probe succeeds."""
    return await service.check_host_health(host_id)


class TemplateCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    description: str = Field("", max_length=2000)
    environment_variables_text: str = Field("", max_length=100_000)
    supported_executors: list[ExecutorType] = Field(default_factory=list, max_length=6)


class TemplateUpdate(_Patch):
    name: Name | None = None
    description: str | None = Field(None, max_length=2000)
    environment_variables_text: str | None = Field(None, max_length=100_000)
    supported_executors: list[ExecutorType] | None = Field(None, max_length=6)


@admin_router.get("/templates", response_model=list[EnvironmentVariableTemplate])
async def list_templates(_: AdminUser, service: Containers) -> list[EnvironmentVariableTemplate]:
    return await (await service.store()).template_list()


@admin_router.post("/templates", status_code=201, response_model=EnvironmentVariableTemplate)
async def create_template(
    body: TemplateCreate, user: AdminUser, service: Containers
) -> EnvironmentVariableTemplate:
    """KEY=value lines; `#` comments and blank lines allowed; a bad line is named by number."""
    return await service.create_template(**body.model_dump(), created_by=user.user_id)


@admin_router.get("/templates/{template_id}", response_model=EnvironmentVariableTemplate)
async def get_template(
    template_id: str, _: AdminUser, service: Containers
) -> EnvironmentVariableTemplate:
    return await service.get_template(template_id)


@admin_router.patch("/templates/{template_id}", response_model=EnvironmentVariableTemplate)
async def update_template(
    template_id: str, body: TemplateUpdate, _: AdminUser, service: Containers
) -> EnvironmentVariableTemplate:
    return await service.update_template(template_id, **body.model_dump(exclude_unset=True))
