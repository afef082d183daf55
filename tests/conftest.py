"""Fixtures shared by every test: settings on temporary paths and the embedded store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from src.config import Settings, load_settings
from src.services.store.local import LocalStore


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        bulk_export_path=tmp_path / "exports",
        bulkjobs_db_path=tmp_path / "bulkjobs.db",
        bulk_progress_interval_ms=20,
        bulkjobs_lease_seconds=5,
        bulkjobs_embedded_worker=False,
        bulk_max_export_size_mb=1,
    )


@pytest.fixture
async def local_store(settings: Settings) -> AsyncIterator[LocalStore]:
    async with LocalStore(settings.bulkjobs_db_path) as store:
        yield store
