"""Registry of job types: each names its stages and the processor of each stage."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from src.services.bulk_job_manager import validate_stages
from src.services.domain import BulkJobStage
from src.services.errors import InvalidInput, NotFound
from src.services.runner import StageProcessor

P = TypeVar("P", bound=StageProcessor)

#: Checks and normalises a job type's job_data; raises InvalidInput naming the field.
Validator = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class JobType:
    name: str
    stages: list[str]
    processors: dict[str, StageProcessor] = field(default_factory=dict)
    validate: Validator | None = None
    description: str = ""


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
    ) -> JobType:
        """Register (or replace) a job type."""
        job_type = JobType(name, validate_stages(stages), {}, validate, description)
        self._types[name] = job_type
        for stage, processor in (processors or {}).items():
            self._add_processor(job_type, str(stage), processor)
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

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def validate_job_data(self, name: str, job_data: dict[str, Any]) -> dict[str, Any]:
        job_type = self._types.get(name)
        if job_type is None:
            raise InvalidInput("job_type", f"unknown job type {name!r}; known: {self.names()}")
        return job_type.validate(job_data) if job_type.validate else job_data
