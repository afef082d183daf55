"""Store selection: the embedded SQLite store by default, Convex when configured."""

from __future__ import annotations

from src.config import ConfigError, Settings
from src.services.store.base import Store


async def open_store(settings: Settings) -> Store:
    """Open the configured store; fails fast when it cannot be reached."""
    if settings.bulkjobs_store == "convex":
        raise ConfigError("BULKJOBS_STORE=convex: the Convex store is not part of this build yet")
    from src.services.store.local import LocalStore

    store = LocalStore(settings.bulkjobs_db_path)
    await store.open()
    return store
