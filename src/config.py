"""Every setting of the service, read from the environment and validated once at start-up."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(Exception):
    """A setting has a bad value; the message names the variable."""


class Settings(BaseSettings):
    """Service settings. Field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    #: Directory where export files are written, one sub-directory per job.
    bulk_export_path: Path = Path("./exports")
    #: Hours an export stays downloadable before cleanup deletes it.
    bulk_export_retention_hours: float = Field(24, gt=0)
    #: Largest export file; writing stops and the partial file is removed past it.
    bulk_max_export_size_mb: float = Field(500, gt=0)
    #: Rate-limit window in minutes.
    bulk_rate_limit_window: float = Field(60, gt=0)
    #: Jobs a user may create per window.
    bulk_rate_limit_max_jobs: int = Field(5, ge=1)
    #: At most one progress write per stage per this many milliseconds.
    bulk_progress_interval_ms: int = Field(250, ge=0, le=60_000)
    #: Largest accepted job_data, serialized, in bytes.
    bulk_max_job_data_bytes: int = Field(256 * 1024, ge=1024)

    #: Which store holds the state: the embedded SQLite file or a Convex deployment.
    bulkjobs_store: Literal["local", "convex"] = "local"
    #: The SQLite file of the embedded store.
    bulkjobs_db_path: Path = Path("./data/bulkjobs.db")
    bulkjobs_host: str = "127.0.0.1"
    bulkjobs_port: int = Field(8000, ge=1, le=65535)
    #: Seconds between periodic export cleanups inside the server.
    bulkjobs_cleanup_interval_s: float = Field(300, gt=0)
    #: Seconds a claimed job's lease lasts without a heartbeat.
    bulkjobs_lease_seconds: float = Field(30, gt=0)
    #: Jobs one in-process worker runs at once.
    bulkjobs_worker_concurrency: int = Field(4, ge=1, le=1000)
    #: Start the in-process worker with the server.
    bulkjobs_embedded_worker: bool = True

    #: Container jobs one processor runs at once.
    bulkjobs_container_concurrency: int = Field(4, ge=1, le=1000)
    #: Seconds between a processor's looks at running containers and for new jobs.
    bulkjobs_container_poll_s: float = Field(1.0, gt=0, le=60)
    #: Where the local executor keeps each job's output files (default: the temp dir).
    bulkjobs_local_work_dir: Path | None = None

    #: Largest request body accepted, in bytes; larger is a 413 naming this setting.
    bulkjobs_max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    #: Origins allowed to call the API from a browser (comma-separated); empty: CORS off.
    bulkjobs_cors_origins: str = ""
    #: `text` or `json` (one object per line, with job_id, stage and user_id when known).
    bulkjobs_log_format: Literal["text", "json"] = "text"
    bulkjobs_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    convex_url: str | None = None
    convex_deploy_key: str | None = None

    @field_validator("convex_url")
    @classmethod
    def _check_convex_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value or None

    @model_validator(mode="after")
    def _check_convex_selected(self) -> Settings:
        if self.bulkjobs_store == "convex" and not self.convex_url:
            raise ValueError("BULKJOBS_STORE=convex needs CONVEX_URL")
        return self

    @property
    def cors_origins(self) -> list[str]:
        origins = self.bulkjobs_cors_origins.split(",")
        return [origin.strip() for origin in origins if origin.strip()]

    @property
    def rate_limit_window_s(self) -> float:
        return self.bulk_rate_limit_window * 60

    @property
    def max_export_bytes(self) -> int:
        return int(self.bulk_max_export_size_mb * 1024 * 1024)

    @property
    def progress_interval_s(self) -> float:
        return self.bulk_progress_interval_ms / 1000


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning a validation failure into one readable ConfigError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]  # overrides are validated here
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        name = "_".join(str(part) for part in error["loc"]).upper() or "settings"
        lines.append(f"{name}: {error['msg']} (got {error.get('input')!r})")
    return "invalid configuration: " + "; ".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read on first use rather than at import."""
    return load_settings()
