"""The `store` fixture of the contract suite: every test runs against each Store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from src.services.store.base import Store
from tests.conftest import STORE_KINDS, open_store


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(request.param, tmp_path / "contract.db", request)
    try:
        yield opened
    finally:
        await opened.aclose()
