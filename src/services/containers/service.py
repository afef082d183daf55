"""ContainerJobService: create, read, cancel container jobs; manage hosts and templates.

Application code uses the module-level `container_jobs`, as it uses `bulk_job_manager` for
bulk jobs; both share one store. The processor (processor.py) runs what this creates.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from pydantic import ValidationError

from src.services.bulk_job_manager import BulkJobManager, bulk_job_manager
from src.services.containers.factory import ExecutorFactory, executor_class
from src.services.containers.models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    ContainerJob,
    ContainerJobSpec,
    ContainerJobStatus,
    EnvironmentVariableTemplate,
    ExecutorHost,
    ExecutorType,
    check_host_limits,
    format_env_text,
    parse_env_text,
)
from src.services.containers.routing import choose_host, estimate_cost, why_not
from src.services.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from src.services.store.base import ContainerStore
from src.services.store.local_containers import new_id

log = logging.getLogger(__name__)

MAX_LIST = 1000


def invalid_input(exc: ValidationError, prefix: str = "") -> InvalidInput:
    """The first pydantic error as InvalidInput naming its field."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return InvalidInput(f"{prefix}{where}", first["msg"])


class ContainerJobService:
    def __init__(self, manager: BulkJobManager | None = None) -> None:
        self.manager = manager or bulk_job_manager
        self._factory: ExecutorFactory | None = None

    async def store(self) -> ContainerStore:
        return await self.manager.container_store()

    async def factory(self) -> ExecutorFactory:
        if self._factory is None:
            work_dir = self.manager.settings.bulkjobs_local_work_dir
            self._factory = ExecutorFactory(await self.store(), work_dir)
        return self._factory

    async def aclose(self) -> None:
        if self._factory is not None:
            await self._factory.aclose()
            self._factory = None

    # -- jobs ------------------------------------------------------------------------------

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
        **fields: Any,
    ) -> ContainerJob:
        """Validate, pick a host (routing when none is given) and store a pending job.

        `fields` are the other ContainerJobSpec fields (memory_limit, cpu_limit,
        timeout_seconds, working_directory, network_configuration, priority, max_retries,
        preferred_executor, description, bulk_job_id, item_key). Errors name the field.
        """
        job = (
            await self.prepare_jobs(
                [{"docker_image": image, "command": command, "name": name, **fields}],
                user=user,
                environment_template=environment_template,
                environment_vars=environment_vars,
                host=host,
                executor_type=executor_type,
                trusted=trusted,
            )
        )[0]
        await (await self.store()).container_create(job)
        log.info("container job created", extra={"job_id": job.id, "host_id": job.host_id})
        return job

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
        if not trusted and environment_template is not None:
            # Templates hold shared secrets; only admins manage and use them.
            raise PermissionDenied("only admins may use environment templates")
        template = await self._template(environment_template)
        overrides = _env_text(environment_vars)
        hosts = await self._candidate_hosts(host, executor_type)
        if not trusted:
            hosts = _isolated_only(hosts, pinned=host is not None)
            for spec_fields in specs:
                _check_networks(spec_fields.get("network_configuration") or [], hosts)
        jobs = []
        for spec_fields in specs:
            spec = _spec(spec_fields, overrides)
            job = _new_job(spec, user, template)
            jobs.append(_route(job, spec, hosts, template, pinned=host is not None))
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
        """The job; NotFound if it does not exist or `user` is given and does not own it."""
        job = await (await self.store()).container_get(job_id)
        if job is None or (user is not None and job.created_by != user):
            raise NotFound(f"container job {job_id} not found")
        return job

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
        return await (await self.store()).container_list(
            status=status,
            host_id=host,
            created_by=user,
            bulk_job_id=bulk_job_id,
            limit=max(1, min(limit, MAX_LIST)),
        )

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
        store = await self.store()
        cancelled = 0
        for status in ("pending", "queued", "retrying", "launching", "running"):
            for job in await store.container_list(
                status=status, bulk_job_id=bulk_job_id, limit=MAX_LIST
            ):
                with contextlib.suppress(Conflict):  # it ended meanwhile
                    cancelled += await self.cancel_job(job.id, reason="bulk job cancelled")
        return cancelled

    async def stop_container(self, job: ContainerJob) -> bool:
        """Stop and remove a job's container; failures are logged, not raised."""
        try:
            executor = await (await self.factory()).get_executor(job)
            return await executor.cleanup(job.get_execution_identifier())
        except Exception:
            log.warning("could not stop the container of job %s", job.id, exc_info=True)
            return False

    async def get_logs(self, job_id: str, user: str | None = None) -> dict[str, str]:
        """stdout/stderr: stored for a finished job, read live from a running one."""
        job = await self.get_job(job_id, user)
        if job.status in ACTIVE_STATUSES and job.get_execution_identifier():
            executor = await (await self.factory()).get_executor(job)
            stdout, stderr = await executor.get_logs(job.get_execution_identifier())
        else:
            stdout, stderr = job.stdout_log, job.stderr_log
        return {"stdout": stdout, "stderr": stderr, "status": job.status.value}

    # -- hosts -----------------------------------------------------------------------------

    async def create_host(self, **fields: Any) -> ExecutorHost:
        try:
            host = ExecutorHost.model_validate({"id": new_id(), **fields})
        except ValidationError as exc:
            raise invalid_input(exc) from None
        executor_class(host.executor_type)  # a missing SDK is an error now, not at launch
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
        """Ask the host's executor; record the outcome (3 failures in a row: unavailable)."""
        host = await self.get_host(host_id)
        try:
            executor = await (await self.factory()).executor_for_host(host)
            health = await executor.get_health_status()
        except Exception as exc:
            health = {"healthy": False, "error": str(exc), "response_time": None}
        store = await self.store()
        updated = await store.host_record_health(host.id, bool(health.get("healthy")))
        return health | {"health_check_failures": updated.health_check_failures}

    # -- templates -------------------------------------------------------------------------

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
    spec: ContainerJobSpec, user: str | None, template: EnvironmentVariableTemplate | None
) -> ContainerJob:
    return ContainerJob.model_validate(
        spec.model_dump()
        | {
            "id": new_id(),
            "created_by": user,
            "environment_template_id": template.id if template else None,
        }
    )


def _route(
    job: ContainerJob,
    spec: ContainerJobSpec,
    hosts: list[ExecutorHost],
    template: EnvironmentVariableTemplate | None,
    pinned: bool,
) -> ContainerJob:
    if pinned:
        host = hosts[0]
        check_host_limits(spec, host)
        problem = why_not(job, host, template)
        # A full host still takes queued work; anything else is a real refusal.
        if problem is not None and not problem.startswith("full"):
            raise InvalidInput("host", f"host {host.name} cannot run this job: {problem}")
        reason, cost = f"{host.name}: chosen by the caller", estimate_cost(job, host)
    else:
        decision = choose_host(job, _not_full(hosts), template)
        host, reason, cost = decision.host, decision.reason, decision.estimated_cost
    job.host_id, job.executor_type = host.id, host.executor_type
    job.routing_reason, job.estimated_cost = reason, cost
    return job


def runs_untrusted(host: ExecutorHost) -> bool:
    """Whether a non-admin's job may run on the host: the local executor isolates nothing,
    so only when its config says `allow_untrusted_jobs`."""
    return host.executor_type != "local" or bool(host.executor_config.get("allow_untrusted_jobs"))


def _isolated_only(hosts: list[ExecutorHost], pinned: bool) -> list[ExecutorHost]:
    allowed = [host for host in hosts if runs_untrusted(host)]
    if not allowed:
        where = f"host {hosts[0].name}" if pinned else "the available hosts"
        raise PermissionDenied(
            f"{where} run commands without isolation (local executor); only admins may use"
            " them -- choose a docker or cloud host"
        )
    return allowed


#: Docker network modes that share another namespace: never for an untrusted caller.
SHARED_NETWORK_MODES = ("host",)


def _check_networks(networks: list[dict[str, Any]], hosts: list[ExecutorHost]) -> None:
    """An untrusted caller's job may join only networks every candidate host lists in
    executor_config.allowed_networks: `host` or `container:<id>` would reach past the
    container's isolation."""
    for net in networks:
        name = str(net.get("network_name") or "")
        if not name or name == "none":
            continue
        allowed = all(name in host.executor_config.get("allowed_networks", []) for host in hosts)
        if name in SHARED_NETWORK_MODES or name.startswith("container:") or not allowed:
            raise PermissionDenied(
                f"network {name!r} is not in the host's allowed_networks; only admins may"
                " choose other networks"
            )


def _not_full(hosts: list[ExecutorHost]) -> list[ExecutorHost]:
    """Routing ranks hosts by their slots, but a pending job only needs a slot when it
    launches; when every host is busy, queue on the best one rather than refuse."""
    if any(host.current_job_count < host.max_concurrent_jobs for host in hosts):
        return hosts
    return [host.model_copy(update={"current_job_count": 0}) for host in hosts]


#: The process-wide service. Creating it opens nothing: the store opens on first use,
#: shared with `bulk_job_manager`.
container_jobs = ContainerJobService()
