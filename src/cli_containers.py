"""`bulkjobs containers`: bulk operations on container jobs from the command line.

Job ids come as arguments or, with --ids-file, one per line from a file ("-" for stdin).
A command exits 1 when any job was not changed, after listing each one and why.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from src.cli_common import err, out, with_manager
from src.services.bulk_job_manager import BulkJobManager
from src.services.containers.bulk_operations import (
    MAX_BULK_CREATION_LIMIT,
    WRITE_CHUNK,
    ContainerBulkOperations,
)
from src.services.containers.service import ContainerJobService
from src.services.domain.containers import ContainerJobStatus

T = TypeVar("T")

containers_app = typer.Typer(help="Bulk operations on container jobs.", no_args_is_help=True)

Ids = Annotated[list[str] | None, typer.Argument(help="Container job ids", show_default=False)]
IdsFile = Annotated[
    Path | None, typer.Option("--ids-file", help="File of job ids, one per line ('-': stdin)")
]


def _with_bulk(fn: Callable[[ContainerBulkOperations], Awaitable[T]]) -> T:
    """Run `fn` with bulk operations on the configured store, closing it afterwards."""

    async def run(manager: BulkJobManager) -> T:
        service = ContainerJobService(manager)
        try:
            return await fn(ContainerBulkOperations(service))
        finally:
            await service.aclose()

    return with_manager(run)


def _ids(ids: list[str] | None, ids_file: Path | None) -> list[str]:
    found = list(ids or [])
    if ids_file is not None:
        text = sys.stdin.read() if str(ids_file) == "-" else ids_file.read_text()
        found += [line.strip() for line in text.splitlines() if line.strip()]
    if not found:
        err.print("[red]no job ids given (arguments or --ids-file)[/red]")
        raise typer.Exit(2)
    return found


def _report(verb: str, count: int, errors: dict[str, str]) -> None:
    """Print the outcome; exit 1 when some jobs were not changed."""
    out.print(f"{verb} {count} container jobs")
    for job_id, reason in errors.items():
        err.print(f"[yellow]{job_id}: {reason}[/yellow]")
    if errors:
        raise typer.Exit(1)


@containers_app.command("bulk-create")
def bulk_create(
    image: Annotated[str, typer.Argument(help="Docker image")],
    count: Annotated[int, typer.Option(min=1, max=MAX_BULK_CREATION_LIMIT)] = 1,
    host: Annotated[str | None, typer.Option(help="Host id or name (default: routing)")] = None,
    command: Annotated[str, typer.Option(help="Command to run")] = "",
    user: Annotated[str, typer.Option(help="Owner of the jobs")] = "cli",
    batch_size: Annotated[int, typer.Option(min=1, max=WRITE_CHUNK)] = 100,
    print_ids: Annotated[bool, typer.Option("--ids", help="Print the new job ids")] = False,
) -> None:
    """Create COUNT identical container jobs, written BATCH_SIZE per transaction."""
    jobs, errors = _with_bulk(
        lambda ops: ops.create_jobs_bulk(image, count, user, host, command, batch_size)
    )
    if print_ids:
        for job in jobs:
            out.print(job.id)
    err.print(f"created {len(jobs)} container jobs")
    for problem in errors:
        err.print(f"[red]{problem}[/red]")
    if errors:
        raise typer.Exit(1)


@containers_app.command("set-status")
def set_status(
    status: Annotated[ContainerJobStatus, typer.Argument(help="The new status")],
    ids: Ids = None,
    ids_file: IdsFile = None,
    reason: Annotated[str | None, typer.Option(help="Recorded as the status message")] = None,
) -> None:
    """Apply STATUS to each job where the status table allows it (cancel stops containers)."""
    job_ids = _ids(ids, ids_file)
    count, errors = _with_bulk(lambda ops: ops.bulk_update_job_status(job_ids, status, reason))
    _report("updated", count, errors)


@containers_app.command()
def migrate(
    target: Annotated[str, typer.Option("--to", help="Target host id or name")],
    ids: Ids = None,
    ids_file: IdsFile = None,
) -> None:
    """Move jobs that have not started to another host."""
    job_ids = _ids(ids, ids_file)
    count, errors = _with_bulk(lambda ops: ops.migrate_jobs_to_host(job_ids, target))
    _report("migrated", count, errors)


@containers_app.command()
def delete(
    ids: Ids = None,
    ids_file: IdsFile = None,
    force: Annotated[
        bool, typer.Option(help="Also unfinished jobs (cancelled, containers stopped)")
    ] = False,
) -> None:
    """Delete finished jobs (with --force, unfinished ones too)."""
    job_ids = _ids(ids, ids_file)
    count, errors = _with_bulk(lambda ops: ops.bulk_delete_jobs(job_ids, force))
    _report("deleted", count, errors)


@containers_app.command()
def cleanup(
    days: Annotated[float, typer.Option(min=0, help="Delete finished jobs older than this")] = 7,
) -> None:
    """Delete every finished job created more than DAYS days ago, in bounded batches."""
    removed = _with_bulk(lambda ops: ops.bulk_cleanup_old_jobs(days))
    out.print(f"deleted {removed} old container jobs")
