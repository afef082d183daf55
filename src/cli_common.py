"""What every `bulkjobs` command shares: the consoles, the settings, and running a coroutine
with a manager on the configured store, with errors turned into exit codes (2: bad
configuration, 1: the service refused)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer
from rich.console import Console

from src.config import ConfigError, Settings, get_settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.errors import BulkJobError

T = TypeVar("T")

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def settings_or_exit() -> Settings:
    try:
        return get_settings()
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def with_manager(fn: Callable[[BulkJobManager], Awaitable[T]]) -> T:
    """Run `fn` with a manager on the configured store, closing it afterwards."""

    async def main() -> T:
        manager = BulkJobManager(settings_or_exit())
        try:
            return await fn(manager)
        finally:
            await manager.aclose()

    try:
        return asyncio.run(main())
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    except BulkJobError as exc:
        err.print(f"[red]{type(exc).__name__}: {exc}[/red]")
        raise typer.Exit(1) from None
