"""The `bulkjobs` command line: serve, worker, run, cleanup, token and jobs."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from src.config import ConfigError, Settings, get_settings
from src.services.auth import create_api_token
from src.services.bulk_job_manager import BulkJobManager
from src.services.errors import BulkJobError
from src.services.job_types import job_types
from src.services.job_worker import JobWorker, worker_id
from src.services.reports import JobReport

T = TypeVar("T")

app = typer.Typer(
    help="Multi-stage bulk jobs with live progress and exports.", no_args_is_help=True
)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
jobs_app = typer.Typer(help="Inspect bulk jobs.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(jobs_app, name="jobs")

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _settings() -> Settings:
    try:
        return get_settings()
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _with_manager(fn: Callable[[BulkJobManager], Awaitable[T]]) -> T:
    """Run `fn` with a manager on the configured store, closing it afterwards."""

    async def main() -> T:
        manager = BulkJobManager(_settings())
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


async def _bootstrap_admin(manager: BulkJobManager) -> str | None:
    store = await manager.store()
    if await store.count_tokens():
        return None
    return await create_api_token(store, "admin", is_admin=True, name="first admin")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address")] = None,
    port: Annotated[int | None, typer.Option(help="Port")] = None,
) -> None:
    """Start the HTTP service (with its in-process worker and periodic cleanup)."""
    import uvicorn

    from src.app import create_app

    settings = _settings()
    host = host or settings.bulkjobs_host
    port = port or settings.bulkjobs_port
    token = _with_manager(_bootstrap_admin)
    if token:
        out.print("Created the first admin token (shown once, keep it):")
        out.print(f"  {token}")
        out.print(f"Open: http://{host}:{port}/?token={token}")
        out.print(f"API:  curl -H 'Authorization: Bearer {token}' http://{host}:{port}/bulk-jobs")
    else:
        out.print(f"Serving on http://{host}:{port}/ (create a token: bulkjobs token create)")
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(min=1, help="Jobs run at once")] = 4,
    burst: Annotated[bool, typer.Option(help="Exit once no work is left")] = False,
    poll_interval: Annotated[float, typer.Option(min=0.01, help="Seconds between polls")] = 1.0,
) -> None:
    """Run bulk jobs from the shared store until stopped (or, with --burst, until idle)."""
    logging.basicConfig(level=logging.INFO)

    async def run(manager: BulkJobManager) -> None:
        job_worker = JobWorker(manager, job_types, concurrency, poll_interval, worker_id())
        err.print(f"worker {job_worker.owner} running job types {job_types.names()}")
        try:
            await job_worker.run(burst=burst)
        finally:
            await job_worker.aclose()

    _with_manager(run)


@app.command()
def cleanup() -> None:
    """Delete expired exports once (the server also does this periodically)."""
    removed = _with_manager(lambda manager: manager.cleanup_expired_exports())
    out.print(f"removed {removed} expired exports")


@app.command("run")
def run_spec(
    spec: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Job spec JSON")],
) -> None:
    """Run one job to the end in this process, with a progress bar per stage.

    SPEC.json: {"job_type": "http_fetch", "user_id": "me", "job_data": {...}}
    """
    try:
        body = json.loads(spec.read_text())
    except json.JSONDecodeError as exc:
        err.print(f"[red]{spec}: not valid JSON: {exc}[/red]")
        raise typer.Exit(2) from None
    report = _with_manager(lambda manager: _run_with_progress(manager, body))
    _print_outcome(report)
    if report.status != "completed":
        raise typer.Exit(1)


async def _run_with_progress(manager: BulkJobManager, body: dict[str, Any]) -> JobReport:
    job_type = str(body.get("job_type", ""))
    job_data = job_types.validate_job_data(job_type, body.get("job_data") or {})
    job_id = await manager.create_bulk_job(
        job_type=job_type,
        user_id=str(body.get("user_id", "cli")),
        job_data=job_data,
        stages=body.get("stages") or job_types.get(job_type).stages,
    )
    run = asyncio.create_task(
        manager.process_job_with_stages(job_id, job_types.get(job_type).processors)
    )
    with Progress(
        TextColumn("{task.description:<20}"),
        BarColumn(),
        TextColumn("{task.fields[counts]}"),
        console=err,
    ) as bars:
        tasks: dict[str, TaskID] = {}
        while not run.done():
            await _refresh_bars(manager, job_id, bars, tasks)
            await asyncio.wait({run}, timeout=0.2)
        await _refresh_bars(manager, job_id, bars, tasks)
    await run
    report = await manager.get_job_status(job_id)
    assert report is not None
    return report


async def _refresh_bars(
    manager: BulkJobManager, job_id: str, bars: Progress, tasks: dict[str, TaskID]
) -> None:
    report = await manager.get_job_status(job_id)
    for stage in report.stages if report else []:
        if stage.name not in tasks:
            tasks[stage.name] = bars.add_task(stage.name, total=1.0, counts="")
        counts = (
            f"{stage.items_completed}/{stage.items_total or '?'} ok, {stage.items_failed} failed"
        )
        bars.update(tasks[stage.name], completed=stage.progress, counts=f"{stage.status} {counts}")


def _print_outcome(report: JobReport) -> None:
    out.print(f"job {report.job_id}: {report.status}")
    if report.error_message:
        out.print(f"error: {report.error_message}")
    settings = _settings()
    for export in report.exports:
        path = settings.bulk_export_path / report.job_id
        out.print(
            f"export {export.export_id}: {path} ({export.filename}, {export.size_bytes} bytes)"
        )


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option(help="The user id the token acts as")],
    admin: Annotated[bool, typer.Option(help="May manage hosts, templates and all jobs")] = False,
    name: Annotated[str, typer.Option(help="A label for the token")] = "",
) -> None:
    """Create an API token; prints the token alone on stdout."""

    async def create(manager: BulkJobManager) -> str:
        return await create_api_token(await manager.store(), user, admin, name)

    sys.stdout.write(_with_manager(create) + "\n")


@jobs_app.command("list")
def jobs_list(
    user: Annotated[str, typer.Option(help="Whose jobs")],
    status: Annotated[str | None, typer.Option(help="Only this status")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
) -> None:
    """List a user's jobs, newest first."""
    reports = _with_manager(lambda manager: manager.get_user_jobs(user, status, None, limit))
    table = Table("job id", "type", "status", "progress", "items", "created")
    for report in reports:
        items = (
            f"{report.items_completed}/{report.items_total or '?'} ({report.items_failed} failed)"
        )
        table.add_row(
            report.job_id,
            report.job_type,
            report.status,
            f"{report.progress:.0%}",
            items,
            f"{report.created_at:%Y-%m-%d %H:%M:%S}",
        )
    out.print(table)


@jobs_app.command("show")
def jobs_show(job_id: Annotated[str, typer.Argument(help="The job id")]) -> None:
    """Show one job with its stages and exports as JSON."""
    report = _with_manager(lambda manager: manager.get_job_status(job_id))
    if report is None:
        err.print(f"[red]job {job_id} not found[/red]")
        raise typer.Exit(1)
    out.print_json(report.model_dump_json())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
