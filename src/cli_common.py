"""What every `bulkjobs` command shares: the consoles, the settings, and running a coroutine
with a manager on the configured store, with errors turned into exit codes (2: bad
configuration, 1: the service refused)."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console

from src.config import ConfigError, Settings, data_dir, get_settings
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


def describe_store(settings: Settings) -> str:
    """Which store a command reads, as listings print it (so that a command run with other
    settings than the server's is noticed)."""
    if settings.bulkjobs_store == "convex":
        return f"the Convex deployment {settings.convex_url}"
    return f"the SQLite file {settings.bulkjobs_db_path.absolute()}"


def own_command() -> str:
    """This program as a command that works from any directory: the absolute path of the
    `bulkjobs` script that is running (it is in .venv/bin, not on PATH, after `make run`)."""
    argv0 = sys.argv[0]
    found = argv0 if os.sep in argv0 else shutil.which(argv0)
    if found and Path(found).name == "bulkjobs":
        return shlex.quote(str(Path(found).absolute()))
    return f"{shlex.quote(sys.executable)} -m src.cli"


def token_command(settings: Settings) -> str:
    """A `token create` command that works as printed, on the same store as this process."""
    env = ""
    default = data_dir() / "bulkjobs.db"
    if settings.bulkjobs_store == "local" and settings.bulkjobs_db_path != default:
        env = f"BULKJOBS_DB_PATH={shlex.quote(str(settings.bulkjobs_db_path.absolute()))} "
    return f"{env}{own_command()} token create --user alice"


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
