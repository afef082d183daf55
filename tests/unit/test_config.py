"""Settings: defaults, environment variables, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from src.config import ConfigError, load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data-home"))
    settings = load_settings()
    # The per-user data directory, wherever the command runs.
    assert settings.bulkjobs_db_path == tmp_path / "data-home" / "bulkjobs" / "bulkjobs.db"
    assert settings.bulk_export_path == tmp_path / "data-home" / "bulkjobs" / "exports"
    assert settings.bulk_export_retention_hours == 24
    assert settings.bulk_max_export_size_mb == 500
    assert settings.bulk_rate_limit_window == 60
    assert settings.bulk_rate_limit_max_jobs == 5
    assert settings.bulk_progress_interval_ms == 250
    assert settings.bulkjobs_store == "local"
    assert settings.rate_limit_window_s == 3600


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULK_RATE_LIMIT_MAX_JOBS", "9")
    monkeypatch.setenv("BULK_EXPORT_PATH", "/tmp/bulk_exports")
    settings = load_settings()
    assert settings.bulk_rate_limit_max_jobs == 9
    assert str(settings.bulk_export_path) == "/tmp/bulk_exports"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BULK_RATE_LIMIT_MAX_JOBS", "many"),
        ("BULK_RATE_LIMIT_MAX_JOBS", "0"),
        ("BULK_PROGRESS_INTERVAL_MS", "-1"),
        ("BULKJOBS_STORE", "postgres"),
        ("BULKJOBS_PORT", "70000"),
        ("CONVEX_URL", "ftp://x"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_convex_needs_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULKJOBS_STORE", "convex")
    monkeypatch.delenv("CONVEX_URL", raising=False)
    with pytest.raises(ConfigError, match="CONVEX_URL"):
        load_settings()


def test_next_public_convex_url_is_read_when_convex_url_is_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CONVEX_URL", raising=False)
    monkeypatch.setenv("NEXT_PUBLIC_CONVEX_URL", "https://guide.convex.cloud")
    monkeypatch.setenv("BULKJOBS_STORE", "convex")
    assert load_settings().convex_url == "https://guide.convex.cloud"
    monkeypatch.setenv("CONVEX_URL", "")  # as copied from .env.example
    assert load_settings().convex_url == "https://guide.convex.cloud"
    monkeypatch.setenv("CONVEX_URL", "https://own.convex.cloud")
    assert load_settings().convex_url == "https://own.convex.cloud"


def test_a_bad_next_public_convex_url_names_that_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVEX_URL", raising=False)
    monkeypatch.setenv("NEXT_PUBLIC_CONVEX_URL", "convex.cloud")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert "NEXT_PUBLIC_CONVEX_URL" in str(refused.value)
    assert "CONVEX_URL:" not in str(refused.value).replace("NEXT_PUBLIC_CONVEX_URL", "")


def test_default_retention_may_not_pass_the_users_cap() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(bulk_export_retention_hours=800, bulkjobs_max_export_retention_hours=720)
    assert "BULK_EXPORT_RETENTION_HOURS" in str(refused.value)
    assert "BULKJOBS_MAX_EXPORT_RETENTION_HOURS" in str(refused.value)
    assert load_settings(bulkjobs_max_export_retention_hours=24).bulk_export_retention_hours == 24
