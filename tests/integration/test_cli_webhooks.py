"""`bulkjobs webhooks` against a real SQLite file: create prints the secret alone on its last
line, list shows the endpoint, deliveries shows what a job wrote, bad input exits 1 naming
the field, delete removes it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook
from typer.testing import CliRunner

from src.cli import app
from src.config import get_settings
from src.services.domain import NewJob
from src.services.store.local import LocalStore
from src.services.webhooks import signed_headers

runner = CliRunner()


@pytest.fixture(autouse=True)
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("BULKJOBS_DB_PATH", str(tmp_path / "cli.db"))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def invoke(*args: str) -> str:
    result = runner.invoke(app, ["webhooks", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


async def create_job(path: Path) -> None:
    async with LocalStore(path) as store:
        job = NewJob(job_type="sample", user_id="alice", job_data={}, stages=["a"])
        await store.create(job, None)


def test_create_list_deliveries_delete(environment: Path) -> None:
    created = invoke(
        "create", "--user", "alice", "--url", "https://hooks.example.com/x", "--event",
        "job.created", "--event", "job.completed",
    )  # fmt: skip
    *_, secret = created.strip().splitlines()
    assert secret.startswith("whsec_")
    endpoint_id = created.split()[1]
    # The secret signs as the reference library expects.
    headers = signed_headers(secret, "msg_1", 1_700_000_000, "{}")
    expected = Webhook(secret).sign("msg_1", datetime.fromtimestamp(1_700_000_000, UTC), "{}")
    assert headers["webhook-signature"] == expected
    listed = invoke("list")
    assert endpoint_id in listed and "alice" in listed and "active" in listed
    asyncio.run(create_job(environment / "cli.db"))
    shown = invoke("deliveries", endpoint_id)
    assert "job.created" in shown and "pending" in shown
    assert "job.created" not in invoke("deliveries", endpoint_id, "--status", "failed")
    invoke("delete", endpoint_id)
    assert endpoint_id not in invoke("list")


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--url", "ftp://example.com", "--event", "job.created"], "url"),
        (["--url", "https://example.com", "--event", "job.exploded"], "events"),
    ],
)
def test_bad_input_exits_1_naming_the_field(args: list[str], field: str) -> None:
    result = runner.invoke(app, ["webhooks", "create", "--user", "alice", *args])
    assert result.exit_code == 1
    assert f"InvalidInput: {field}:" in result.output
