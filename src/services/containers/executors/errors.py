"""Executor errors. `transient` says whether trying again later may succeed."""

from __future__ import annotations

from src.services.errors import BulkJobError


class ExecutorError(BulkJobError):
    """A backend could not do what was asked."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class ExecutorConnectionError(ExecutorError):
    """The backend could not be reached; usually worth retrying."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=True)


class ExecutorResourceError(ExecutorError):
    """The job asks for more than the backend allows, or the image does not exist."""


class ExecutorConfigurationError(ExecutorError):
    """The host's executor_config is missing something the backend needs."""
