"""ContainerJobService: create, read, cancel container jobs; manage hosts and templates.

Application code uses the module-level `container_jobs`, as it uses `bulk_job_manager` for
bulk jobs; both share one store. The processor (processor.py) runs what this creates.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from pydantic import ValidationError

from src.config import Settings
from src.services.bulk_job_manager import bulk_job_manager
from src.services.containers.cascade import cancel_container_jobs
from src.services.containers.executors.config import check_executor_config
from src.services.containers.factory import ExecutorFactory, executor_class, stop_container
from src.services.containers.health import probe_host
from src.services.containers.routing import check_networks, isolated_only, route
from src.services.domain import check_user_id, new_id
from src.services.domain.containers import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    ContainerJob,
    ContainerJobSpec,
    ContainerJobStatus,
    ContainerQuota,
    EnvironmentVariableTemplate,
    ExecutorHost,
    ExecutorType,
    format_env_text,
    parse_env_text,
)
from src.services.errors import InvalidInput, NotFound, PermissionDenied
from src.services.id_prefix import MAX_MATCHES, can_be_prefix, unique_match
from src.services.store.base import Store

log = logging.getLogger(__name__)

MAX_LIST = 1000


def invalid_input(exc: ValidationError, prefix: str = "") -> InvalidInput:
    """The first pydantic error as InvalidInput naming its field."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return InvalidInput(f"{prefix}{where}", first["msg"])


class ContainerBackend(Protocol):
    """What the service needs of the manager: settings, the store and the executors (a
    stage processor's `ctx.manager` has them too)."""

    @property
    def settings(self) -> Settings: ...

    async def store(self) -> Store: ...

    async def executors(self) -> ExecutorFactory: ...

    async def close_executors(self) -> None: ...


class ContainerJobService:
    def __init__(self, manager: ContainerBackend | None = None) -> None:
        self.manager: ContainerBackend = manager or bulk_job_manager

    async def store(self) -> Store:
        return await self.manager.store()

    async def factory(self) -> ExecutorFactory:
        """The process's executors (the manager's, shared with its workers)."""
        return await self.manager.executors()

    async def aclose(self) -> None:
        """Close the executors (they open again on next use)."""
        await self.manager.close_executors()

    async def create_job(
        self,
        image: str,
        command: str = "",
        name: str = "",
        *,
        user: str | None = None,
        environment_template: str | EnvironmentVariableTemplate | None = None,
        environment_vars: dict[str, str] | None = None,
        host: str | ExecutorHost | None = None,
        executor_type: ExecutorType | str | None = None,
        trusted: bool = True,
        limited: bool = True,
        docker_host: str | ExecutorHost | None = None,
        **fields: Any,
    ) -> ContainerJob:
        """Validate, pick a host (routing when none is given) and store a pending job.
        `limited` (unless False: admins over HTTP): ContainerQuotaExceeded when `user` has
        BULKJOBS_USER_MAX_UNFINISHED_CONTAINER_JOBS unfinished jobs already.

        `docker_host` is the seed's name for `host` (a host, its id or its name). `fields`
        are the other ContainerJobSpec fields (memory_limit, cpu_limit, timeout_seconds,
        working_directory, network_configuration, priority, max_retries, preferred_executor,
        description, bulk_job_id, item_key). Errors name the field.
        """
        job = (
            await self.prepare_jobs(
                [{"docker_image": image, "command": command, "name": name, **fields}],
                user=user,
                environment_template=environment_template,
                environment_vars=environment_vars,
                host=_one_host(host, docker_host),
                executor_type=executor_type,
                trusted=trusted,
            )
        )[0]
        await (await self.store()).container_create(job, self.quota(limited))
        log.info("container job created", extra={"job_id": job.id, "host_id": job.host_id})
        return job

    def quota(self, limited: bool = True) -> ContainerQuota | None:
        """The per-user cap on unfinished container jobs that creations check (None: not
        limited)."""
        if not limited:
            return None
        cap = self.manager.settings.bulkjobs_user_max_unfinished_container_jobs
        return ContainerQuota(max_unfinished=cap)

    async def prepare_jobs(
        self,
        specs: list[dict[str, Any]],
        *,
        user: str | None = None,
        environment_template: str | EnvironmentVariableTemplate | None = None,
        environment_vars: dict[str, str] | None = None,
        host: str | ExecutorHost | None = None,
        executor_type: str | None = None,
        trusted: bool = True,
    ) -> list[ContainerJob]:
        """Validated, routed jobs, not yet stored (bulk creation writes them in batches).

        An untrusted caller (a non-admin over HTTP) cannot use a host that runs commands
        without isolation (the local executor) unless the host allows it."""
        if user is not None:
            user = check_user_id(user, "user")
        if not trusted and environment_template is not None:
            # Templates hold shared secrets; only admins manage and use them.
            raise PermissionDenied("only admins may use environment templates")
        template = await self._template(environment_template)
        overrides = _env_text(environment_vars)
        hosts = await self._candidate_hosts(host, executor_type)
        if not trusted:
            hosts = isolated_only(hosts, pinned=host is not None)
            for spec_fields in specs:
                check_networks(spec_fields.get("network_configuration") or [], hosts)
        jobs = []
        for spec_fields in specs:
            spec = _spec(spec_fields, overrides)
            job = _new_job(spec, user, template, untrusted=not trusted, pinned=host is not None)
            jobs.append(route(job, spec, hosts, template, pinned=host is not None))
        return jobs

    async def _template(
        self, template: str | EnvironmentVariableTemplate | None
    ) -> EnvironmentVariableTemplate | None:
        if template is None or isinstance(template, EnvironmentVariableTemplate):
            return template
        found = await self.find_template(template)
        if found is None:
            raise InvalidInput("environment_template", f"no template named {template!r}")
        return found

    async def _candidate_hosts(
        self, host: str | ExecutorHost | None, executor_type: str | None
    ) -> list[ExecutorHost]:
        store = await self.store()
        if isinstance(host, ExecutorHost):
            return [host]
        if host is not None:
            found = await self.find_host(host)
            if found is None:
                raise InvalidInput("host", f"no executor host {host!r}")
            return [found]
        hosts = await store.host_list(active_only=True)
        if executor_type is not None:
            hosts = [candidate for candidate in hosts if candidate.executor_type == executor_type]
            if not hosts:
                raise InvalidInput("executor_type", f"no active {executor_type} host")
        return hosts

    async def get_job(self, job_id: str, user: str | None = None) -> ContainerJob:
        """The job of that id, or the one whose id starts with it; NotFound if there is none
        or `user` is given and does not own it, AmbiguousId if several ids start with it."""
        store = await self.store()
        job = await store.container_get(job_id) if can_be_prefix(job_id) else None
        if job is None or (user is not None and job.created_by != user):
            job = await self.get_by_prefix(prefix=job_id, user=user)
        return await self.resolve_template(job)

    async def get_by_prefix(self, prefix: str, user: str | None = None) -> ContainerJob:
        """The one job (of `user` when given) whose id starts with `prefix`."""
        store = await self.store()
        matches = []
        if can_be_prefix(prefix):
            matches = await store.container_get_ids_by_prefix(prefix, user, MAX_MATCHES + 1)
        job = await store.container_get(unique_match("job_id", prefix, matches, "container job"))
        if job is None:
            raise NotFound(f"container job {prefix} not found")
        return job

    async def resolve_template(self, job: ContainerJob) -> ContainerJob:
        """The job with its own environment template loaded, so that
        job.get_all_environment_variables() resolves template + overrides by itself."""
        return (await self._with_templates([job]))[0]

    async def _with_templates(self, jobs: list[ContainerJob]) -> list[ContainerJob]:
        """Jobs with their templates loaded, each template read once."""
        store = await self.store()
        wanted = {job.environment_template_id for job in jobs if job.environment_template_id}
        templates = {key: await store.template_get(key) for key in wanted}
        for job in jobs:
            if job.environment_template_id is not None:
                job.attach_template(templates[job.environment_template_id])
        return jobs

    async def list_jobs(
        self,
        status: str | None = None,
        host: str | None = None,
        user: str | None = None,
        bulk_job_id: str | None = None,
        limit: int = 50,
    ) -> list[ContainerJob]:
        if status is not None and status not in ContainerJobStatus.__members__.values():
            raise InvalidInput("status", f"unknown status {status!r}")
        jobs = await (await self.store()).container_list(
            status=status,
            host_id=host,
            created_by=user,
            bulk_job_id=bulk_job_id,
            limit=max(1, min(limit, MAX_LIST)),
        )
        return await self._with_templates(jobs)

    async def cancel_job(self, job_id: str, user: str | None = None, reason: str = "") -> bool:
        """Cancel an unfinished job and stop its container; False if it had already ended."""
        job = await self.get_job(job_id, user)
        if job.status in TERMINAL_STATUSES:
            return False
        store = await self.store()
        message = reason or "cancelled by request"
        cancelled = await store.container_transition(
            job.id, ContainerJobStatus.CANCELLED, {"status_message": message}
        )
        # The job as written: it may have launched between the read and the cancel.
        if cancelled.get_execution_identifier():
            await self.stop_container(cancelled)
        return True

    async def cancel_for_bulk_job(self, bulk_job_id: str) -> int:
        """Cancel every unfinished container job a bulk job started; returns how many."""
        return await cancel_container_jobs(await self.store(), await self.factory(), bulk_job_id)

    async def stop_container(self, job: ContainerJob) -> bool:
        """Stop and remove a job's container; failures are logged, not raised."""
        return await stop_container(await self.factory(), job)

    async def get_logs(self, job_id: str, user: str | None = None) -> dict[str, str]:
        """stdout/stderr: stored for a finished job, read live from a running one."""
        job = await self.get_job(job_id, user)
        if job.status in ACTIVE_STATUSES and job.get_execution_identifier():
            executor = await (await self.factory()).get_executor(job)
            stdout, stderr = await executor.get_logs(job.get_execution_identifier())
        else:
            stdout, stderr = job.stdout_log, job.stderr_log
        return {"stdout": stdout, "stderr": stderr, "status": job.status.value}

    async def create_host(self, **fields: Any) -> ExecutorHost:
        try:
            host = ExecutorHost.model_validate({"id": new_id(), **fields})
        except ValidationError as exc:
            raise invalid_input(exc) from None
        # A missing SDK or a bad config is an error now, not at every routed launch.
        _check_config(host.executor_type, host.executor_config)
        await (await self.store()).host_create(host)
        return host

    async def find_host(self, key: str) -> ExecutorHost | None:
        """A host by id or name."""
        store = await self.store()
        return await store.host_get(key) or await store.host_get_by_name(key)

    async def get_host(self, key: str) -> ExecutorHost:
        """A host by id or name; NotFound otherwise."""
        host = await self.find_host(key)
        if host is None:
            raise NotFound(f"executor host {key} not found")
        return host

    async def update_host(self, host_id: str, **fields: Any) -> ExecutorHost:
        host = await self.get_host(host_id)
        if "executor_config" in fields:
            # A config read back from GET /hosts carries *** for secrets: keep the stored ones.
            fields["executor_config"] = _keep_redacted(
                fields["executor_config"], host.executor_config
            )
            _check_config(host.executor_type, fields["executor_config"])
        try:
            ExecutorHost.model_validate(host.model_dump() | fields)
        except ValidationError as exc:
            raise invalid_input(exc) from None
        return await (await self.store()).host_update(host.id, fields)

    async def increment_job_count(self, host_id: str) -> ExecutorHost:
        """Take a slot on the host atomically (no-op when full); returns the host."""
        return await (await self.store()).host_adjust_count(host_id, +1)

    async def decrement_job_count(self, host_id: str) -> ExecutorHost:
        """Give a slot back atomically (no-op at 0); returns the host."""
        return await (await self.store()).host_adjust_count(host_id, -1)

    async def check_host_health(self, host_id: str) -> dict[str, Any]:
        """Probe the host now and record the outcome, as the workers' periodic probes do
        (BULKJOBS_HOST_FAILURE_THRESHOLD failures in a row: routing skips it)."""
        host = await self.get_host(host_id)
        threshold = self.manager.settings.bulkjobs_host_failure_threshold
        return await probe_host(await self.store(), await self.factory(), host, threshold)

    async def create_template(self, **fields: Any) -> EnvironmentVariableTemplate:
        try:
            template = EnvironmentVariableTemplate.model_validate({"id": new_id(), **fields})
        except ValidationError as exc:
            raise invalid_input(exc) from None
        template.get_environment_variables_dict()  # a malformed line names its number
        await (await self.store()).template_create(template)
        return template

    async def find_template(self, key: str) -> EnvironmentVariableTemplate | None:
        """A template by id or name."""
        store = await self.store()
        return await store.template_get(key) or await store.template_get_by_name(key)

    async def get_template(self, key: str) -> EnvironmentVariableTemplate:
        """A template by id or name; NotFound otherwise."""
        found = await self.find_template(key)
        if found is None:
            raise NotFound(f"template {key} not found")
        return found

    async def update_template(self, template_id: str, **fields: Any) -> EnvironmentVariableTemplate:
        if "environment_variables_text" in fields:
            parse_env_text(fields["environment_variables_text"])
        template = await self.get_template(template_id)
        try:
            return await (await self.store()).template_update(template.id, fields)
        except ValidationError as exc:
            raise invalid_input(exc) from None


def _one_host(
    host: str | ExecutorHost | None, docker_host: str | ExecutorHost | None
) -> str | ExecutorHost | None:
    """`host`, or its alias `docker_host`; both at once only when they agree."""
    if host is None or docker_host is None:
        return host if docker_host is None else docker_host
    if _host_key(host) != _host_key(docker_host):
        raise InvalidInput("docker_host", "is another name for host; give one of them")
    return host


def _host_key(host: str | ExecutorHost) -> str:
    return host.id if isinstance(host, ExecutorHost) else host


def _check_config(executor_type: str, config: dict[str, Any]) -> None:
    check_executor_config(executor_class(executor_type).config_model, executor_type, config)


def _keep_redacted(new: Any, stored: Any) -> Any:
    if isinstance(new, dict) and isinstance(stored, dict):
        return {key: _keep_redacted(value, stored.get(key)) for key, value in new.items()}
    return stored if new == "***" and stored is not None else new


def _env_text(environment_vars: dict[str, str] | None) -> str:
    if not environment_vars:
        return ""
    text = format_env_text({str(key): str(value) for key, value in environment_vars.items()})
    parse_env_text(text, "environment_vars")  # keys must be valid names
    if any("\n" in str(value) for value in environment_vars.values()):
        raise InvalidInput("environment_vars", "values may not contain newlines")
    return text


def _spec(fields: dict[str, Any], overrides: str) -> ContainerJobSpec:
    values = dict(fields)
    if overrides:
        values["override_environment"] = (values.get("override_environment") or "") + overrides
    try:
        spec = ContainerJobSpec.model_validate(values)
    except ValidationError as exc:
        raise invalid_input(exc) from None
    if not spec.docker_image.strip():
        raise InvalidInput("docker_image", "an image is required")
    parse_env_text(spec.override_environment, "override_environment")
    return spec


def _new_job(
    spec: ContainerJobSpec,
    user: str | None,
    template: EnvironmentVariableTemplate | None,
    *,
    untrusted: bool,
    pinned: bool,
) -> ContainerJob:
    job = ContainerJob.model_validate(
        spec.model_dump()
        | {
            "id": new_id(),
            "created_by": user,
            "environment_template_id": template.id if template else None,
            "untrusted": untrusted,
            "host_pinned": pinned,
        }
    )
    return job.attach_template(template)


#: The process-wide service. Creating it opens nothing: the store opens on first use,
#: shared with `bulk_job_manager`.
container_jobs = ContainerJobService()
