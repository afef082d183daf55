"""Every setting of the service, read from the environment and validated once at start-up."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(Exception):
    """A setting has a bad value; the message names the variable."""


def data_dir() -> Path:
    """The per-user data directory (platformdirs): `~/.local/share/bulkjobs` on Linux (or
    `$XDG_DATA_HOME/bulkjobs`), `~/Library/Application Support/bulkjobs` on macOS,
    `%LOCALAPPDATA%\\bulkjobs` on Windows. The default home of the database and the exports,
    so that every command finds the same ones whatever directory it runs in."""
    return platformdirs.user_data_path("bulkjobs", appauthor=False)


class Settings(BaseSettings):
    """Service settings. Field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    #: Directory where export files are written, one sub-directory per job.
    bulk_export_path: Path = Field(default_factory=lambda: data_dir() / "exports")
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
    #: Bytes of unexpired exports one user may hold (413 past it); admins asking over HTTP
    #: are exempt.
    bulkjobs_user_max_export_bytes: int = Field(1024**3, ge=1)
    #: Longest `expires_in_hours` a user may ask for an export (at most a year); admins may
    #: ask up to a year.
    bulkjobs_max_export_retention_hours: float = Field(720, gt=0, le=24 * 365)
    #: Container jobs one user may have unfinished (pending, queued, launching, running,
    #: retrying) at once; past it creation is a 429. Admins over HTTP are exempt.
    bulkjobs_user_max_unfinished_container_jobs: int = Field(1000, ge=1, le=100_000)

    #: Which store holds the state: the embedded SQLite file or a Convex deployment.
    bulkjobs_store: Literal["local", "convex"] = "local"
    #: The SQLite file of the embedded store.
    bulkjobs_db_path: Path = Field(default_factory=lambda: data_dir() / "bulkjobs.db")
    bulkjobs_host: str = "127.0.0.1"
    bulkjobs_port: int = Field(8000, ge=1, le=65535)
    #: Seconds between periodic export cleanups inside the server, and between retention
    #: sweeps of a worker.
    bulkjobs_cleanup_interval_s: float = Field(300, gt=0)
    #: Days a finished job is kept before retention deletes it with its files; 0: forever.
    bulkjobs_job_retention_days: float = Field(30, ge=0, le=100 * 365)
    #: Seconds a claimed job's lease lasts without a heartbeat.
    bulkjobs_lease_seconds: float = Field(30, gt=0)
    #: Jobs one in-process worker runs at once.
    bulkjobs_worker_concurrency: int = Field(4, ge=1, le=1000)
    #: Run jobs inside the server process (false: the API only enqueues; `bulkjobs worker`
    #: processes run them).
    bulkjobs_embedded_worker: bool = True
    #: Bulk jobs one user may have running at once (on every store; the rest wait their turn).
    bulkjobs_user_max_running: int = Field(2, ge=1, le=10_000)
    #: Claims of a bulk or container job before it is failed with its last error (each
    #: failed attempt and each worker that died holding it uses one).
    bulkjobs_max_attempts: int = Field(5, ge=1, le=100)
    #: Seconds before the first retry of a failed attempt; each further retry waits twice as
    #: long (with jitter, at most 30 s).
    bulkjobs_retry_backoff_s: float = Field(0.5, gt=0, le=60)

    #: Container jobs one processor runs at once.
    bulkjobs_container_concurrency: int = Field(4, ge=1, le=1000)
    #: Seconds between a processor's looks at running containers and for new jobs.
    bulkjobs_container_poll_s: float = Field(1.0, gt=0, le=60)
    #: Seconds between health probes of each active executor host (workers take turns);
    #: 0 turns periodic probes off.
    bulkjobs_host_health_interval_s: float = Field(30, ge=0, le=86_400)
    #: Consecutive failed probes or launches after which routing skips a host until a probe
    #: succeeds.
    bulkjobs_host_failure_threshold: int = Field(3, ge=1, le=1000)
    #: Where the local executor keeps each job's output files (default: the temp dir).
    bulkjobs_local_work_dir: Path | None = None

    #: Let http_fetch (and every request made for a user) reach loopback, private and
    #: link-local addresses, for deployments that fetch internal services.
    bulkjobs_http_fetch_allow_private: bool = False
    #: Host names and CIDRs (comma-separated) fetched even where the policy refuses them.
    bulkjobs_http_fetch_allowed_hosts: str = ""
    #: Largest response body one fetched URL may have; its item fails past it.
    bulkjobs_http_fetch_max_body_bytes: int = Field(10 * 1024 * 1024, ge=1)
    #: Bytes of bodies one http_fetch job may keep in all; later items fail once it is spent.
    bulkjobs_http_fetch_max_job_bytes: int = Field(256 * 1024 * 1024, ge=1)

    #: Seconds a webhook receiver has to answer one delivery attempt.
    bulkjobs_webhook_timeout_s: float = Field(15, gt=0, le=300)
    #: Seconds before the first retry of a failed delivery; each further retry waits twice
    #: as long (with jitter), at most BULKJOBS_WEBHOOK_RETRY_CAP_S.
    bulkjobs_webhook_retry_base_s: float = Field(5, gt=0, le=3600)
    #: Longest wait between two attempts of a delivery.
    bulkjobs_webhook_retry_cap_s: float = Field(3600, gt=0, le=24 * 3600)
    #: Seconds after its event a delivery keeps being retried; then it is marked failed.
    bulkjobs_webhook_retry_window_s: float = Field(24 * 3600, gt=0, le=30 * 24 * 3600)
    #: Seconds an endpoint may fail without one success before it is disabled.
    bulkjobs_webhook_disable_after_s: float = Field(24 * 3600, gt=0, le=30 * 24 * 3600)
    #: Webhook deliveries one worker sends at once.
    bulkjobs_webhook_concurrency: int = Field(8, ge=1, le=1000)

    #: Seconds a client may take to send a request's headers (slow ones get 408).
    bulkjobs_header_timeout_s: float = Field(10, gt=0, le=3600)
    #: Seconds a client may take to send a request's body once its headers are in.
    bulkjobs_body_timeout_s: float = Field(60, gt=0, le=24 * 3600)
    #: Open connections the server takes in all; past it, 503.
    bulkjobs_max_connections: int = Field(1000, ge=1)
    #: Open connections one client address may hold; past it, 503.
    bulkjobs_max_connections_per_client: int = Field(128, ge=1)

    #: Largest request body accepted, in bytes; larger is a 413 naming this setting.
    bulkjobs_max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    #: Origins allowed to call the API from a browser (comma-separated); empty: CORS off.
    bulkjobs_cors_origins: str = ""
    #: `text` or `json` (one object per line, with job_id, stage and user_id when known).
    bulkjobs_log_format: Literal["text", "json"] = "text"
    bulkjobs_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    #: The Convex deployment; NEXT_PUBLIC_CONVEX_URL (the name a Next.js frontend uses for
    #: the same URL) is read when CONVEX_URL is unset or empty.
    convex_url: str | None = None
    next_public_convex_url: str | None = None
    convex_deploy_key: str | None = None

    @field_validator("convex_url", "next_public_convex_url")
    @classmethod
    def _check_convex_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value or None

    @model_validator(mode="before")
    @classmethod
    def _convex_url_fallback(cls, data: Any) -> Any:
        """CONVEX_URL from NEXT_PUBLIC_CONVEX_URL when only that one is set (a bad value is
        left to its own check, so that the error names the variable that holds it)."""
        if not isinstance(data, dict) or data.get("convex_url"):
            return data
        fallback = data.get("next_public_convex_url")
        if isinstance(fallback, str) and fallback.startswith(("http://", "https://")):
            return {**data, "convex_url": fallback}
        return data

    @field_validator("bulkjobs_http_fetch_allowed_hosts")
    @classmethod
    def _check_allowed_hosts(cls, value: str) -> str:
        from src.services.fetch_policy import parse_allowed_hosts

        parse_allowed_hosts(value)
        return value

    @model_validator(mode="after")
    def _check_retention(self) -> Settings:
        if self.bulk_export_retention_hours > self.bulkjobs_max_export_retention_hours:
            raise ValueError(
                f"BULK_EXPORT_RETENTION_HOURS ({self.bulk_export_retention_hours}) is above"
                f" BULKJOBS_MAX_EXPORT_RETENTION_HOURS ({self.bulkjobs_max_export_retention_hours})"
            )
        return self

    @model_validator(mode="after")
    def _check_convex_selected(self) -> Settings:
        if self.bulkjobs_store == "convex" and not self.convex_url:
            raise ValueError("BULKJOBS_STORE=convex needs CONVEX_URL (or NEXT_PUBLIC_CONVEX_URL)")
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
