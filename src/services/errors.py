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


class TokenRefused(BulkJobError):
    """A known API token that no longer signs anyone in: revoked, or past its expiry."""


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


class QuotaExceeded(BulkJobError):
    """A per-user limit on what is held would be exceeded; nothing was added. `limit` names
    the setting, `maximum` is its value, `usage` what the user holds now and `requested`
    what the refused call would have added."""

    limit = ""
    unit = ""

    def __init__(
        self, user_id: str, maximum: int, usage: int, requested: int, at_least: bool = False
    ) -> None:
        self.user_id, self.maximum, self.usage, self.requested = user_id, maximum, usage, requested
        more = f"at least {requested}" if at_least else str(requested)
        super().__init__(
            f"{self.limit} is {maximum} {self.unit}: user {user_id!r} holds {usage}, and this"
            f" would add {more}"
        )


class ExportQuotaExceeded(QuotaExceeded):
    """The bytes of the user's unexpired exports would pass BULKJOBS_USER_MAX_EXPORT_BYTES."""

    limit = "BULKJOBS_USER_MAX_EXPORT_BYTES"
    unit = "bytes of unexpired exports"


class ContainerQuotaExceeded(QuotaExceeded):
    """The user's unfinished container jobs would pass
    BULKJOBS_USER_MAX_UNFINISHED_CONTAINER_JOBS (jobs reserved by a bulk creation under way
    count as unfinished)."""

    limit = "BULKJOBS_USER_MAX_UNFINISHED_CONTAINER_JOBS"
    unit = "unfinished container jobs"


class StorageFull(BulkJobError):
    """The disk holding exports (BULK_EXPORT_PATH) has no room; nothing was kept."""


class InvalidInput(BulkJobError):
    """Input that passed the HTTP layer but not a service rule; names the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class AmbiguousId(InvalidInput):
    """A shortened id that is the start of more than one id; says how many."""

    def __init__(self, field: str, given: str, matches: str, what: str) -> None:
        self.matches = matches
        super().__init__(field, f"{given!r} is the start of {matches} {what} ids; give more of it")


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
