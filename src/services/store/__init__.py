"""Store selection: the embedded SQLite store by default, Convex when configured."""

from __future__ import annotations

from src.config import Settings
from src.services.store.base import Store


async def open_store(settings: Settings) -> Store:
    """Open the configured store; fails fast when it cannot be reached."""
    if settings.bulkjobs_store == "convex":
        from src.services.store.convex import open_convex_store

        return await open_convex_store(settings)
    from src.services.store.local import LocalStore

    store = LocalStore(settings.bulkjobs_db_path)
    await store.open()
    return store
