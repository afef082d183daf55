"""`bulkjobs containers ...` against a real SQLite file (the sub-app invoked on its own).

Bulk create, set-status, migrate, delete and cleanup."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from src.cli_containers import containers_app
from src.config import get_settings

runner = CliRunner()


@pytest.fixture(autouse=True)
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("BULKJOBS_DB_PATH", str(tmp_path / "cli.db"))
    monkeypatch.setenv("BULK_EXPORT_PATH", str(tmp_path / "exports"))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def create(count: int) -> list[str]:
    args = ["bulk-create", "busybox", "--count", str(count), "--host", "local", "--ids"]
    result = runner.invoke(containers_app, [*args, "--batch-size", "2", "--command", "true"])
    assert result.exit_code == 0, result.output
    assert f"created {count} container jobs" in result.stderr
    return result.stdout.split()


def test_bulk_create_then_set_status(environment: Path) -> None:
    ids = create(5)
    assert len(set(ids)) == 5
    result = runner.invoke(
        containers_app, ["set-status", "cancelled", *ids[:3], "--reason", "not needed"]
    )
    assert result.exit_code == 0, result.output
    assert "updated 3 container jobs" in result.stdout

    listing = environment / "ids.txt"
    listing.write_text("\n".join([*ids, "missing"]) + "\n")
    result = runner.invoke(containers_app, ["set-status", "queued", "--ids-file", str(listing)])
    assert result.exit_code == 1
    assert "updated 2 container jobs" in result.stdout
    assert "cancelled to queued" in result.stderr and "missing: not found" in result.stderr


def test_bulk_create_refuses_what_it_cannot_do() -> None:
    result = runner.invoke(containers_app, ["bulk-create", "busybox", "--host", "nowhere"])
    assert result.exit_code == 1 and "no executor host 'nowhere'" in result.stderr
    assert runner.invoke(containers_app, ["bulk-create", "x", "--count", "10001"]).exit_code == 2
    assert runner.invoke(containers_app, ["set-status", "cancelled"]).exit_code == 2
    result = runner.invoke(containers_app, ["set-status", "exploded", "x"])
    assert result.exit_code == 2


def test_migrate_delete_and_cleanup(environment: Path) -> None:
    ids = create(3)
    result = runner.invoke(containers_app, ["migrate", "--to", "local", *ids])
    assert result.exit_code == 0 and "migrated 3" in result.stdout
    result = runner.invoke(containers_app, ["delete", *ids[:1]])
    assert result.exit_code == 1 and "pending; cancel it first or force" in result.stderr
    result = runner.invoke(containers_app, ["delete", "--force", *ids[:1]])
    assert result.exit_code == 0 and "deleted 1" in result.stdout
    runner.invoke(containers_app, ["set-status", "failed", *ids[1:]])
    result = runner.invoke(containers_app, ["cleanup", "--days", "0"])
    assert result.exit_code == 0 and "deleted 2 old container jobs" in result.stdout


def test_bulk_create_obeys_the_per_user_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULKJOBS_USER_MAX_UNFINISHED_CONTAINER_JOBS", "6")
    get_settings.cache_clear()
    create(4)
    args = ["bulk-create", "busybox", "--count", "3", "--host", "local", "--batch-size", "2"]
    result = runner.invoke(containers_app, args)
    assert result.exit_code == 1
    assert "BULKJOBS_USER_MAX_UNFINISHED_CONTAINER_JOBS is 6" in result.stderr
    assert "holds 4" in result.stderr
