"""Registry of job types: each names its stages, the processor of each stage, how its job
data is checked (`validate`) and authorized for the caller (`authorize`), the other kinds
of work its stages hand to workers (`kinds`: a container_batch job needs container jobs run),
and how a job's failed items become a new job's data (`retry_data`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from src.services.bulk_job_manager import validate_stages
from src.services.domain import BulkJobStage, Job
from src.services.errors import Conflict, InvalidInput, NotFound
from src.services.runner import StageProcessor, StageRetryPolicy, StageServices

P = TypeVar("P", bound=StageProcessor)

#: Checks and normalises a job type's job_data; raises InvalidInput naming the field.
Validator = Callable[[dict[str, Any]], dict[str, Any]]


class Authorizer(Protocol):
    """Checks validated job_data against what the caller may do; returns it, possibly
    narrowed (PermissionDenied or InvalidInput otherwise). `trusted`: the caller is an
    admin."""

    async def __call__(
        self, services: StageServices, job_data: dict[str, Any], user: str, trusted: bool
    ) -> dict[str, Any]: ...


class RetryData(Protocol):
    """The job data of a new job over only the items of `job` (an ended job of this type)
    that failed; None when none did. Conflict, saying why, when which ones failed can no
    longer be told."""

    async def __call__(self, services: StageServices, job: Job, /) -> dict[str, Any] | None: ...


@dataclass
class JobType:
    name: str
    stages: list[str]
    processors: dict[str, StageProcessor] = field(default_factory=dict)
    validate: Validator | None = None
    description: str = ""
    authorize: Authorizer | None = None
    #: Other kinds of work its stages hand to workers (run beside it by `bulkjobs run`).
    kinds: tuple[str, ...] = ()
    #: How its failed items are found for a retry (None: its jobs cannot be retried so).
    retry_data: RetryData | None = None
    #: Stages the runner retries when their processor raises a transient error.
    stage_retries: dict[str, StageRetryPolicy] = field(default_factory=dict)


class JobTypeRegistry:
    """Job types known to this process; runners only claim jobs of registered types."""

    def __init__(self) -> None:
        self._types: dict[str, JobType] = {}

    def register(
        self,
        name: str,
        stages: list[BulkJobStage] | list[str],
        processors: Mapping[BulkJobStage | str, StageProcessor] | None = None,
        validate: Validator | None = None,
        description: str = "",
        authorize: Authorizer | None = None,
        kinds: tuple[str, ...] = (),
        retry_data: RetryData | None = None,
        stage_retries: Mapping[BulkJobStage | str, StageRetryPolicy] | None = None,
    ) -> JobType:
        """Register (or replace) a job type."""
        job_type = JobType(
            name, validate_stages(stages), {}, validate, description, authorize, kinds, retry_data
        )
        for stage, processor in (processors or {}).items():
            self._add_processor(job_type, str(stage), processor)
        for stage, policy in (stage_retries or {}).items():
            if str(stage) not in job_type.stages:
                raise ValueError(f"job type {name} has no stage {stage} to retry")
            job_type.stage_retries[str(stage)] = policy
        self._types[name] = job_type
        return job_type

    def stage(self, name: str, stage: BulkJobStage | str) -> Callable[[P], P]:
        """Decorator registering a processor for one stage of a registered job type."""

        def decorate(processor: P) -> P:
            self._add_processor(self.get(name), str(stage), processor)
            return processor

        return decorate

    @staticmethod
    def _add_processor(job_type: JobType, stage: str, processor: StageProcessor) -> None:
        if stage not in job_type.stages:
            raise ValueError(f"job type {job_type.name} has no stage {stage}")
        job_type.processors[stage] = processor

    def get(self, name: str) -> JobType:
        try:
            return self._types[name]
        except KeyError:
            raise NotFound(f"unknown job type {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._types)

    def processors_for(self, job_type: str) -> Mapping[str, StageProcessor]:
        return self.get(job_type).processors

    def stage_retries_for(self, job_type: str) -> Mapping[str, StageRetryPolicy]:
        return self.get(job_type).stage_retries

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def validate_job_data(self, name: str, job_data: dict[str, Any]) -> dict[str, Any]:
        job_type = self._types.get(name)
        if job_type is None:
            raise InvalidInput("job_type", f"unknown job type {name!r}; known: {self.names()}")
        return job_type.validate(job_data) if job_type.validate else job_data

    async def authorized_job_data(
        self,
        name: str,
        job_data: dict[str, Any],
        services: StageServices,
        user: str,
        trusted: bool,
    ) -> dict[str, Any]:
        """job_data validated, then authorized for the caller by the job type's hook."""
        checked = self.validate_job_data(name, job_data)
        authorize = self._types[name].authorize
        return await authorize(services, checked, user, trusted) if authorize else checked

    async def retry_job_data(
        self, job: Job, services: StageServices, trusted: bool
    ) -> dict[str, Any] | None:
        """The job data of a retry of `job`'s failed items, validated and authorized for its
        owner as any new job's is; None when no item failed. Conflict naming why when its
        type cannot say which items failed."""
        job_type = self._types.get(job.job_type)
        if job_type is None:
            raise Conflict(
                f"job {job.id} is of type {job.job_type!r}, which this server does not know,"
                " so it cannot tell which of its items failed"
            )
        if job_type.retry_data is None:
            raise Conflict(
                f"jobs of type {job.job_type!r} cannot retry their failed items: the type"
                " does not say how they become a new job (it registered no retry_data)"
            )
        job_data = await job_type.retry_data(services, job)
        if job_data is None:
            return None
        return await self.authorized_job_data(
            job.job_type, job_data, services, job.user_id, trusted
        )
