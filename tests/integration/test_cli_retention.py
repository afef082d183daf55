"""The token and job deletion commands of the command line, against a real SQLite file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from src.cli import app
from src.config import get_settings
from src.services.auth import authenticate
from src.services.errors import TokenRefused
from src.services.store.local import LocalStore

runner = CliRunner()


@pytest.fixture(autouse=True)
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("BULKJOBS_DB_PATH", str(tmp_path / "cli.db"))
    monkeypatch.setenv("BULK_EXPORT_PATH", str(tmp_path / "exports"))
    monkeypatch.setenv("BULK_PROGRESS_INTERVAL_MS", "20")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


async def check(db: Path, raw: str) -> str:
    async with LocalStore(db) as store:
        try:
            token = await authenticate(store, raw)
        except TokenRefused as exc:
            return str(exc)
    return "ok" if token is not None else "unknown"


def test_tokens_are_listed_without_secrets_and_revoked_by_id(environment: Path) -> None:
    made = runner.invoke(
        app, ["token", "create", "--user", "erin", "--name", "ci", "--expires-in-days", "7"]
    )
    assert made.exit_code == 0, made.output
    raw = made.stdout.strip()
    assert raw.startswith("bjt_") and len(made.stdout.splitlines()) == 1
    listed = runner.invoke(app, ["token", "list", "--user", "erin"])
    assert listed.exit_code == 0, listed.output
    assert raw not in listed.stdout and "erin" in listed.stdout and "ci" in listed.stdout
    assert "never" not in listed.stdout  # it expires
    [row] = [line for line in listed.stdout.splitlines() if "erin" in line]
    token_id = row.split()[0]
    assert asyncio.run(check(environment / "cli.db", raw)) == "ok"

    revoked = runner.invoke(app, ["token", "revoke", token_id])
    assert revoked.exit_code == 0, revoked.output
    assert f"revoked token {token_id} of erin" in revoked.stdout
    assert "revoked" in asyncio.run(check(environment / "cli.db", raw))
    unknown = runner.invoke(app, ["token", "revoke", "000000000000"])
    assert unknown.exit_code == 1 and "NotFound" in unknown.output


def test_an_expiry_must_be_positive() -> None:
    result = runner.invoke(app, ["token", "create", "--user", "x", "--expires-in-days", "0"])
    assert result.exit_code == 2
    assert "expires-in-days" in result.output


def test_jobs_delete_takes_a_finished_job_by_a_start_of_its_id(environment: Path) -> None:
    spec = environment / "spec.json"
    spec.write_text(json.dumps({"job_type": "sample", "user_id": "me", "job_data": {"items": 3}}))
    ran = runner.invoke(app, ["run", str(spec)])
    assert ran.exit_code == 0, ran.output
    job_id = ran.stdout.split()[1].rstrip(":")
    assert (environment / "exports" / job_id).is_dir()

    deleted = runner.invoke(app, ["jobs", "delete", job_id[:8]])

    assert deleted.exit_code == 0, deleted.output
    assert f"deleted job {job_id} (1 exports" in deleted.stdout
    assert not (environment / "exports" / job_id).exists()
    missing = runner.invoke(app, ["jobs", "show", job_id])
    assert missing.exit_code == 1 and "NotFound" in missing.output


def test_cleanup_deletes_jobs_past_their_retention(environment: Path) -> None:
    spec = environment / "spec.json"
    spec.write_text(json.dumps({"job_type": "sample", "user_id": "me", "job_data": {"items": 2}}))
    assert runner.invoke(app, ["run", str(spec)]).exit_code == 0
    kept = runner.invoke(app, ["cleanup"])  # the default keeps jobs for 30 days
    assert kept.exit_code == 0, kept.output
    assert "deleted 0 finished jobs past their retention" in kept.stdout
    # A retention under a tenth of a millisecond: the job finished longer ago than that.
    swept = runner.invoke(app, ["cleanup", "--job-retention-days", "1e-9"])
    assert swept.exit_code == 0, swept.output
    assert "deleted 1 finished jobs past their retention" in swept.stdout
    listed = runner.invoke(app, ["jobs", "list", "--user", "me"])
    assert "sample" not in listed.stdout
