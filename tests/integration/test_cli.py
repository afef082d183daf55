"""The bulkjobs command line against a real SQLite file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from src.cli import app
from src.config import get_settings
from tests.convex_server import ConvexTestServer

runner = CliRunner()


@pytest.fixture(autouse=True)
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("BULKJOBS_DB_PATH", str(tmp_path / "cli.db"))
    monkeypatch.setenv("BULK_EXPORT_PATH", str(tmp_path / "exports"))
    monkeypatch.setenv("BULK_PROGRESS_INTERVAL_MS", "20")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_token_create_prints_only_the_token() -> None:
    result = runner.invoke(app, ["token", "create", "--user", "alice", "--admin"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("bjt_")
    assert len(result.stdout.strip().splitlines()) == 1


def test_run_a_spec_to_the_end(environment: Path) -> None:
    spec = environment / "spec.json"
    spec.write_text(
        json.dumps(
            {"job_type": "sample", "user_id": "me", "job_data": {"items": 30, "delay_ms": 1}}
        )
    )
    result = runner.invoke(app, ["run", str(spec)])
    assert result.exit_code == 0, result.output
    assert "completed" in result.stdout
    assert "export " in result.stdout
    listed = runner.invoke(app, ["jobs", "list", "--user", "me"])
    assert "sample" in listed.stdout and "completed" in listed.stdout
    job_id = result.stdout.split()[1].rstrip(":")
    shown = runner.invoke(app, ["jobs", "show", job_id])
    assert json.loads(shown.stdout)["status"] == "completed"


def test_run_rejects_bad_specs(environment: Path) -> None:
    spec = environment / "spec.json"
    spec.write_text("{nope")
    assert runner.invoke(app, ["run", str(spec)]).exit_code == 2
    spec.write_text(json.dumps({"job_type": "sample", "job_data": {"items": -1}}))
    result = runner.invoke(app, ["run", str(spec)])
    assert result.exit_code == 1
    assert "job_data.items" in result.output


def test_cleanup_and_unknown_job() -> None:
    result = runner.invoke(app, ["cleanup"])
    assert result.exit_code == 0
    assert "removed 0 expired exports" in result.stdout
    assert runner.invoke(app, ["jobs", "show", "missing"]).exit_code == 1


def test_bad_setting_stops_with_the_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULK_RATE_LIMIT_MAX_JOBS", "lots")
    get_settings.cache_clear()
    result = runner.invoke(app, ["cleanup"])
    assert result.exit_code == 2
    assert "BULK_RATE_LIMIT_MAX_JOBS" in result.output


def test_convex_store_is_selected_by_the_environment(
    monkeypatch: pytest.MonkeyPatch, convex_server: ConvexTestServer
) -> None:
    convex_server.reset()
    monkeypatch.setenv("BULKJOBS_STORE", "convex")
    monkeypatch.setenv("CONVEX_URL", convex_server.url)
    monkeypatch.setenv("CONVEX_DEPLOY_KEY", convex_server.admin_key)
    get_settings.cache_clear()
    created = runner.invoke(app, ["token", "create", "--user", "carol"])
    assert created.exit_code == 0, created.output
    token_count = httpx.post(
        f"{convex_server.url}/api/query",
        json={"path": "apiTokens:count", "args": {}, "format": "json"},
        headers={"Authorization": f"Convex {convex_server.admin_key}"},
    ).json()
    assert token_count["value"] == 1


@pytest.mark.parametrize(
    ("url", "key", "message"),
    [
        ("http://127.0.0.1:9", "k", "CONVEX_URL=http://127.0.0.1:9"),
        (None, None, "CONVEX_URL"),
    ],
)
def test_convex_start_up_fails_clearly(
    monkeypatch: pytest.MonkeyPatch, url: str | None, key: str | None, message: str
) -> None:
    monkeypatch.setenv("BULKJOBS_STORE", "convex")
    for name, value in (("CONVEX_URL", url), ("CONVEX_DEPLOY_KEY", key)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    result = runner.invoke(app, ["cleanup"])
    assert result.exit_code == 2
    assert message in result.output


def test_convex_wrong_key_is_refused(
    monkeypatch: pytest.MonkeyPatch, convex_server: ConvexTestServer
) -> None:
    monkeypatch.setenv("BULKJOBS_STORE", "convex")
    monkeypatch.setenv("CONVEX_URL", convex_server.url)
    monkeypatch.setenv("CONVEX_DEPLOY_KEY", "wrong")
    get_settings.cache_clear()
    result = runner.invoke(app, ["cleanup"])
    assert result.exit_code == 2
    assert "CONVEX_DEPLOY_KEY" in result.output
