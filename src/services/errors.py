"""The one exception family of the service; stores and executors translate into it."""

from __future__ import annotations


class BulkJobError(Exception):
    """Root of every error the service raises on purpose."""


class NotFound(BulkJobError):
    """The job, stage, export, token or host does not exist (or is not the caller's)."""


class Conflict(BulkJobError):
    """The requested state transition is not allowed from the current state."""


class PermissionDenied(BulkJobError):
    """The caller is known but may not do this (an admin-only host, another user's job)."""


class HostFull(Conflict):
    """The executor host has no free slot (current_job_count reached max_concurrent_jobs)."""


class RateLimited(BulkJobError):
    """The user has started too many jobs in the current window."""

    def __init__(self, retry_after_s: int, message: str | None = None) -> None:
        self.retry_after_s = max(1, int(retry_after_s))
        super().__init__(message or f"rate limit reached; retry after {self.retry_after_s} s")


class ExportTooLarge(BulkJobError):
    """An export grew past the configured size cap while it was written."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        super().__init__(f"export exceeds the size limit of {limit_bytes} bytes")


class InvalidInput(BulkJobError):
    """Input that passed the HTTP layer but not a service rule; names the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class StoreUnavailable(BulkJobError):
    """The store could not be reached or could not run the operation."""


class JobCancelled(BulkJobError):
    """Raised inside a running processor once its job has been cancelled."""


class StoreAuthError(StoreUnavailable):
    """The store refused our credentials; retrying will not help until they are fixed."""


class StoreRateLimited(StoreUnavailable, RateLimited):
    """The store itself throttled us (HTTP 429); `retry_after_s` is how long it asked for."""


class StoreError(BulkJobError):
    """A store operation failed inside the store (a bug or a limit), not for lack of access."""


class StoreMisconfigured(StoreError):
    """The store lacks something the service needs, such as a deployed function."""
