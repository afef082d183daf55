"""The container half of ConvexStore: container jobs, executor hosts and env templates over
the containerJobs, executorHosts and envTemplates Convex functions.

Models travel as Convex documents: camelCase top-level fields (nested dicts untouched),
datetimes as epoch milliseconds, and None as an absent field.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel

from src.services.domain import ClaimRules, Failure, from_epoch
from src.services.domain.containers import (
    DEFAULT_LOCAL_HOST,
    MAX_HEALTH_FAILURES,
    ContainerJob,
    ContainerJobStatus,
    ContainerQuota,
    EnvironmentVariableTemplate,
    ExecutorHost,
    ExecutorType,
)
from src.services.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)

#: Bounds of the Convex functions (convex/model/containers.ts MAX_BATCH and MAX_LIST).
MAX_BATCH = 500
MAX_LIST = 1000
MAX_CLAIM = 200
#: Fields the store sets itself; a caller's value would be overwritten or is the key.
STORE_OWNED = frozenset({"id", "status", "updated_at"})


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _is_datetime(annotation: Any) -> bool:
    if annotation is datetime:
        return True
    is_union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is (
        typing.Union
    )
    return is_union and datetime in typing.get_args(annotation)


class DocShape(Generic[M]):
    """How one model maps to its Convex document: `id` <-> `id_key`, the rest camelCased."""

    def __init__(self, model: type[M], id_key: str) -> None:
        self.model = model
        self.id_key = id_key
        fields = model.model_fields
        self.snake = {_camel(name): name for name in fields if name != "id"}
        self.times = {name for name, info in fields.items() if _is_datetime(info.annotation)}
        #: Placeholders for required fields, so that a partial update can be validated.
        self.required = {name: "-" for name, info in fields.items() if info.is_required()}

    def _values(self, item: M, names: Iterable[str]) -> dict[str, Any]:
        """Field values as JSON (nested values as LocalStore stores them), times in ms."""
        names = set(names)
        values = item.model_dump(mode="json", include=names)
        for name in names & self.times:
            moment = getattr(item, name)
            values[name] = None if moment is None else moment.timestamp() * 1000
        return values

    def to_doc(self, item: M) -> dict[str, Any]:
        values = self._values(item, self.model.model_fields)
        item_id = values.pop("id")
        doc = {_camel(name): value for name, value in values.items() if value is not None}
        return {self.id_key: item_id} | doc

    def from_doc(self, doc: Mapping[str, Any]) -> M:
        data: dict[str, Any] = {"id": doc[self.id_key]}
        for key, value in doc.items():
            name = self.snake.get(key)
            if name is not None:
                data[name] = from_epoch(value / 1000) if name in self.times else value
        return self.model.model_validate(data)

    def patch(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """`fields` validated as the model would, as Convex `fields` and `unset` arguments."""
        names = [name for name in fields if name in self.model.model_fields]
        names = [name for name in names if name not in STORE_OWNED]
        checked = self.model.model_validate(self.required | dict(fields))
        values = self._values(checked, names)
        present = {_camel(k): v for k, v in values.items() if v is not None}
        unset = [_camel(k) for k, v in values.items() if v is None]
        return {"fields": present, "unset": unset or None}


JOBS = DocShape(ContainerJob, "jobId")
HOSTS = DocShape(ExecutorHost, "hostId")
TEMPLATES = DocShape(EnvironmentVariableTemplate, "templateId")


def failure_args(failure: Failure | None) -> dict[str, Any]:
    """A failed attempt as the arguments of a release (bulkJobs:release, containerJobs:release)."""
    if failure is None:
        return {}
    return {
        "error": failure.error,
        "retryInMs": failure.retry_in_s * 1000,
        "maxAttempts": failure.max_attempts,
    }


def _quota_args(quota: ContainerQuota | None) -> dict[str, Any] | None:
    """containerJobs:create*'s `quota` (absent fields, never null)."""
    if quota is None:
        return None
    args: dict[str, Any] = {"maxUnfinished": quota.max_unfinished, "hold": quota.hold}
    if quota.hold_id is not None:
        args["holdId"] = quota.hold_id
    return args


def _errors(failures: list[dict[str, str]]) -> dict[str, str]:
    return {failure["jobId"]: failure["error"] for failure in failures}


class ConvexContainerOps:
    """Mixed into ConvexStore; `_call` is ConvexStore's."""

    if TYPE_CHECKING:  # ConvexStore provides it

        async def _call(
            self, kind: Literal["query", "mutation"], path: str, args: Mapping[str, Any]
        ) -> Any: ...

    async def ensure_default_host(self) -> None:
        """executorHosts:ensureDefault -- the `local` host, when the store has no host."""
        host = HOSTS.to_doc(ExecutorHost.model_validate(DEFAULT_LOCAL_HOST))
        await self._call("mutation", "executorHosts:ensureDefault", {"host": host})

    async def container_create(
        self, job: ContainerJob, quota: ContainerQuota | None = None
    ) -> None:
        args = {"job": JOBS.to_doc(job), "quota": _quota_args(quota)}
        await self._call("mutation", "containerJobs:create", args)

    async def container_create_batch(
        self, jobs: list[ContainerJob], quota: ContainerQuota | None = None
    ) -> None:
        # One mutation is one transaction; splitting a larger batch would lose atomicity.
        if len(jobs) > MAX_BATCH:
            raise InvalidInput("jobs", f"at most {MAX_BATCH} container jobs per batch")
        if jobs:
            docs = [JOBS.to_doc(job) for job in jobs]
            args = {"jobs": docs, "quota": _quota_args(quota)}
            await self._call("mutation", "containerJobs:createBatch", args)

    async def container_create_copies(
        self, job: ContainerJob, job_ids: list[str], quota: ContainerQuota | None = None
    ) -> None:
        if len(job_ids) > MAX_BATCH:
            raise InvalidInput("job_ids", f"at most {MAX_BATCH} container jobs per batch")
        if job_ids:
            doc = JOBS.to_doc(job)
            args = {"job": doc, "jobIds": job_ids, "quota": _quota_args(quota)}
            await self._call("mutation", "containerJobs:createCopies", args)

    async def container_get(self, job_id: str) -> ContainerJob | None:
        doc = await self._call("query", "containerJobs:get", {"jobId": job_id})
        return None if doc is None else JOBS.from_doc(doc)

    async def container_get_many(self, job_ids: list[str]) -> list[ContainerJob]:
        found: list[ContainerJob] = []
        for start in range(0, len(job_ids), MAX_LIST):
            args = {"jobIds": job_ids[start : start + MAX_LIST]}
            docs = await self._call("query", "containerJobs:getMany", args)
            found.extend(JOBS.from_doc(doc) for doc in docs)
        return found

    async def container_get_ids_by_prefix(
        self, prefix: str, created_by: str | None = None, limit: int = 10
    ) -> list[str]:
        args = {"prefix": prefix, "createdBy": created_by, "limit": limit}
        return list(await self._call("query", "containerJobs:getIdsByPrefix", args))

    async def container_list(
        self,
        status: str | None = None,
        host_id: str | None = None,
        created_by: str | None = None,
        bulk_job_id: str | None = None,
        limit: int = 50,
    ) -> list[ContainerJob]:
        args = {
            "status": status,
            "hostId": host_id,
            "createdBy": created_by,
            "bulkJobId": bulk_job_id,
            "limit": max(1, min(limit, MAX_LIST)),
        }
        return [JOBS.from_doc(doc) for doc in await self._call("query", "containerJobs:list", args)]

    async def container_claim(
        self,
        owner: str,
        lease_s: float,
        limit: int,
        bulk_job_id: str | None = None,
        rules: ClaimRules | None = None,
    ) -> list[ContainerJob]:
        args = {
            "owner": owner,
            "leaseMs": lease_s * 1000,
            "limit": max(1, min(limit, MAX_CLAIM)),
            "maxAttempts": (rules or ClaimRules()).max_attempts,
        }
        if bulk_job_id is not None:
            args["bulkJobId"] = bulk_job_id
        docs = await self._call("mutation", "containerJobs:claim", args)
        return [JOBS.from_doc(doc) for doc in docs]

    async def container_transition(
        self,
        job_id: str,
        status: str,
        fields: dict[str, Any] | None = None,
        report_id: str | None = None,
    ) -> ContainerJob:
        args = {"jobId": job_id, "status": ContainerJobStatus(status).value, "reportId": report_id}
        args |= JOBS.patch(fields or {})
        return JOBS.from_doc(await self._call("mutation", "containerJobs:transition", args))

    async def container_transition_many(
        self, job_ids: list[str], status: str, fields: dict[str, Any] | None = None
    ) -> tuple[list[ContainerJob], dict[str, str]]:
        target = ContainerJobStatus(status).value
        args = {"jobIds": job_ids, "status": target} | JOBS.patch(fields or {})
        result = await self._call("mutation", "containerJobs:transitionMany", args)
        return [JOBS.from_doc(doc) for doc in result["updated"]], _errors(result["errors"])

    async def container_migrate(
        self, job_ids: list[str], host_id: str, executor_type: ExecutorType
    ) -> tuple[list[str], dict[str, str]]:
        args = {"jobIds": job_ids, "hostId": host_id, "executorType": executor_type}
        result = await self._call("mutation", "containerJobs:migrate", args)
        return list(result["moved"]), _errors(result["errors"])

    async def container_remove_finished_before(self, before: datetime, limit: int) -> int:
        args = {"before": before.timestamp() * 1000, "limit": limit}
        return int(await self._call("mutation", "containerJobs:removeFinishedBefore", args))

    async def container_count_by_status(self) -> dict[str, int]:
        # Counts are capped per status (COUNT_CAP in convex/model/containerJobs.ts).
        result = await self._call("query", "containerJobs:countByStatus", {})
        return {status: int(count) for status, count in result["counts"].items()}

    async def container_heartbeat(self, job_id: str, owner: str, lease_s: float) -> str:
        args = {"jobId": job_id, "owner": owner, "leaseMs": lease_s * 1000}
        return str(await self._call("mutation", "containerJobs:heartbeat", args))

    async def container_release(
        self, job_id: str, owner: str, failure: Failure | None = None
    ) -> str:
        args = {"jobId": job_id, "owner": owner} | failure_args(failure)
        return str(await self._call("mutation", "containerJobs:release", args))

    async def container_remove(self, job_ids: list[str], force: bool = False) -> list[str]:
        args = {"jobIds": job_ids, "force": force}
        return list(await self._call("mutation", "containerJobs:remove", args))

    async def host_create(self, host: ExecutorHost) -> None:
        await self._call("mutation", "executorHosts:create", {"host": HOSTS.to_doc(host)})

    async def host_update(self, host_id: str, fields: dict[str, Any]) -> ExecutorHost:
        args = {"hostId": host_id} | HOSTS.patch(fields)
        return HOSTS.from_doc(await self._call("mutation", "executorHosts:update", args))

    async def host_get(self, host_id: str) -> ExecutorHost | None:
        doc = await self._call("query", "executorHosts:get", {"hostId": host_id})
        return None if doc is None else HOSTS.from_doc(doc)

    async def host_get_by_name(self, name: str) -> ExecutorHost | None:
        doc = await self._call("query", "executorHosts:getByName", {"name": name})
        return None if doc is None else HOSTS.from_doc(doc)

    async def host_list(self, active_only: bool = False) -> list[ExecutorHost]:
        docs = await self._call("query", "executorHosts:list", {"activeOnly": active_only})
        return [HOSTS.from_doc(doc) for doc in docs]

    async def host_adjust_count(self, host_id: str, delta: int) -> ExecutorHost:
        args = {"hostId": host_id, "delta": 1 if delta > 0 else -1}
        return HOSTS.from_doc(await self._call("mutation", "executorHosts:adjustCount", args))

    async def host_record_health(
        self,
        host_id: str,
        healthy: bool,
        error: str | None = None,
        threshold: int = MAX_HEALTH_FAILURES,
        probe: bool = True,
    ) -> ExecutorHost:
        args: dict[str, Any] = {
            "hostId": host_id,
            "healthy": healthy,
            "threshold": max(1, threshold),
            "probe": probe,
        }
        if error is not None:
            args["error"] = error
        return HOSTS.from_doc(await self._call("mutation", "executorHosts:recordHealth", args))

    async def host_claim_probes(self, interval_s: float, limit: int) -> list[ExecutorHost]:
        args = {"intervalMs": interval_s * 1000, "limit": max(1, min(limit, MAX_LIST))}
        docs = await self._call("mutation", "executorHosts:claimProbes", args)
        return [HOSTS.from_doc(doc) for doc in docs]

    async def template_create(self, template: EnvironmentVariableTemplate) -> None:
        args = {"template": TEMPLATES.to_doc(template)}
        await self._call("mutation", "envTemplates:create", args)

    async def template_update(
        self, template_id: str, fields: dict[str, Any]
    ) -> EnvironmentVariableTemplate:
        args = {"templateId": template_id} | TEMPLATES.patch(fields)
        return TEMPLATES.from_doc(await self._call("mutation", "envTemplates:update", args))

    async def template_get(self, template_id: str) -> EnvironmentVariableTemplate | None:
        doc = await self._call("query", "envTemplates:get", {"templateId": template_id})
        return None if doc is None else TEMPLATES.from_doc(doc)

    async def template_get_by_name(self, name: str) -> EnvironmentVariableTemplate | None:
        doc = await self._call("query", "envTemplates:getByName", {"name": name})
        return None if doc is None else TEMPLATES.from_doc(doc)

    async def template_list(self) -> list[EnvironmentVariableTemplate]:
        docs = await self._call("query", "envTemplates:list", {})
        return [TEMPLATES.from_doc(doc) for doc in docs]
