"""Job types: the registry and the built-in types (`http_fetch`, `sample`, `container_batch`)."""

from __future__ import annotations

from src.services.job_types import container_batch, http_fetch, sample
from src.services.job_types.registry import JobType, JobTypeRegistry


def default_registry() -> JobTypeRegistry:
    """A registry holding the built-in job types."""
    registry = JobTypeRegistry()
    for module in (http_fetch, sample, container_batch):
        registry.register(
            module.NAME,
            module.STAGES,
            module.PROCESSORS,
            validate=module.validate,
            description=(module.__doc__ or "").strip().splitlines()[0],
            authorize=module.AUTHORIZE,
            kinds=module.KINDS,
            retry_data=module.RETRY_DATA,
            stage_retries=module.STAGE_RETRIES,
        )
    return registry


#: The process-wide registry; application code registers its own job types here.
job_types = default_registry()

__all__ = ["JobType", "JobTypeRegistry", "default_registry", "job_types"]
