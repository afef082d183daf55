"""Settings: defaults, environment variables, and errors that name the variable."""

from __future__ import annotations

import pytest

from src.config import ConfigError, load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    settings = load_settings()
    assert str(settings.bulk_export_path) == "exports"
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
