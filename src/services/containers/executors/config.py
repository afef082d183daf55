"""What an executor_config may hold: the keys every executor reads, and the check of a whole
config against one executor's model (each executor declares its own, next to its code).

Hosts are checked when they are created and patched, so one bad value (a `max_memory_mb`
of "abc") is a 422 naming the key instead of a failure of every job routed afterwards.
Types are strict: "512" is not a number and "false" is not a boolean.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from src.services.errors import InvalidInput

Text = Annotated[str, Field(max_length=10_000)]
Name = Annotated[str, Field(min_length=1, max_length=500)]


class ExecutorConfig(BaseModel):
    """Keys the service itself reads from any host's config (routing and trust rules)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    #: Largest memory_limit (MB) a job may ask for on this host.
    max_memory_mb: int | None = Field(None, gt=0, le=1_048_576)
    #: Largest cpu_limit a job may ask for on this host.
    max_cpu: float | None = Field(None, gt=0, le=1024)
    #: Let non-admins' jobs run on a local host (which isolates nothing).
    allow_untrusted_jobs: bool = False
    #: Networks a non-admin's job may join.
    allowed_networks: list[Name] = Field(default_factory=list, max_length=100)


def check_executor_config(
    model: type[ExecutorConfig], executor_type: str, config: dict[str, Any]
) -> None:
    """InvalidInput naming the first key of `config` that `model` refuses."""
    try:
        model.model_validate(config)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            known = ", ".join(sorted(model.model_fields))
            message = f"is not a setting of the {executor_type} executor (known: {known})"
        raise InvalidInput(f"executor_config.{key}", message) from None
