"""The `store` fixture of the contract suite: every test runs against each Store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from src.services.store.base import Store
from src.services.store.local import LocalStore

STORE_KINDS = ["local"]


async def open_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    if kind == "local":
        store = LocalStore(tmp_path / "contract.db")
        await store.open()
        return store
    raise ValueError(f"unknown store kind {kind}")


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(request.param, tmp_path, request)
    try:
        yield opened
    finally:
        await opened.aclose()
