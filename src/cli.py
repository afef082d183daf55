"""The `bulkjobs` command line: serve, worker, run, cleanup, token, jobs and the container
commands (process_container_jobs, cleanup_containers, create_sample_data, containers)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from src.cli_common import err, out, settings_or_exit, with_manager
from src.cli_containers import containers_app
from src.services.auth import create_api_token
from src.services.bulk_job_manager import BulkJobManager
from src.services.containers.processor import container_processor
from src.services.containers.service import ContainerJobService
from src.services.job_types import job_types
from src.services.logs import configure_logging
from src.services.reports import JobReport

T = TypeVar("T")

app = typer.Typer(
    help="Multi-stage bulk jobs with live progress and exports.", no_args_is_help=True
)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
jobs_app = typer.Typer(help="Inspect bulk jobs.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(jobs_app, name="jobs")
app.add_typer(containers_app, name="containers")

_settings = settings_or_exit
_with_manager = with_manager


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
    configure_logging(settings)
    # log_config=None: uvicorn keeps the handlers configured above (format, redaction).
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None)


worker_app = typer.Typer(
    help="Run bulk jobs, container jobs and work items from the shared store.",
    invoke_without_command=True,
)
app.add_typer(worker_app, name="worker")


@worker_app.callback()
def worker(
    ctx: typer.Context,
    operations: Annotated[
        list[str] | None,
        typer.Option(
            "--operations",
            help="Operations to claim (repeatable; default: all registered, including"
            " bulk_job and container_job)",
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Items run at once")] = 4,
    batch_size: Annotated[int, typer.Option(min=1, max=200, help="Items per claim")] = 100,
    burst: Annotated[bool, typer.Option(help="Exit once no work is left")] = False,
    poll_interval: Annotated[float, typer.Option(min=0.01, help="Seconds between polls")] = 1.0,
    lease: Annotated[
        float | None, typer.Option(min=0.1, help="Lease seconds (default BULKJOBS_LEASE_SECONDS)")
    ] = None,
    grace: Annotated[
        float, typer.Option(min=0, help="Seconds running items get to finish on SIGTERM")
    ] = 30.0,
    name: Annotated[
        str | None, typer.Option(help="Stable worker name: names its outbox (default: host)")
    ] = None,
    outbox: Annotated[Path | None, typer.Option(help="Outbox file (default: by name)")] = None,
    imports: Annotated[
        list[str] | None,
        typer.Option("--import", help="Module registering application operations (repeatable)"),
    ] = None,
) -> None:
    """Run bulk jobs, container jobs and registered work items from the shared store until
    SIGTERM (or, with --burst, until idle). SIGTERM stops claiming, lets running items
    finish within --grace seconds and hands the rest back."""
    if ctx.invoked_subcommand is not None:
        return
    import importlib

    from src.services.worker.service import WorkerOptions, default_name, run_worker

    configure_logging(_settings())
    for module in imports or []:
        importlib.import_module(module)

    async def run(manager: BulkJobManager) -> dict[str, int]:
        options = WorkerOptions(
            name=name or default_name(),
            operations=operations or None,
            concurrency=concurrency,
            batch_size=batch_size,
            burst=burst,
            lease_s=lease or manager.settings.bulkjobs_lease_seconds,
            poll_interval_s=poll_interval,
            grace_s=grace,
            outbox=outbox,
        )
        return (await run_worker(manager, options)).as_dict()

    stats = _with_manager(run)
    out.print(json.dumps(stats, sort_keys=True))


@worker_app.command("status")
def worker_status(
    name: Annotated[str | None, typer.Option(help="Worker name (default: host)")] = None,
    outbox: Annotated[Path | None, typer.Option(help="Outbox file (default: by name)")] = None,
) -> None:
    """Show this worker's outbox depth, the work-item leases its processes hold and the
    work-item counts by status."""
    from src.services.worker.service import worker_status as read_status

    status = _with_manager(lambda manager: read_status(manager, name, outbox))
    corrupt = f", {status.corrupt} corrupt lines" if status.corrupt else ""
    out.print(f"worker {status.name}: outbox {status.outbox}")
    out.print(f"  {status.depth} reports waiting{corrupt}")
    counts = ", ".join(f"{key} {value}" for key, value in status.counts.items())
    out.print(f"work items: {counts or 'none'}")
    table = Table("item", "operation", "owner", "attempts", "lease expires in")
    for item in status.leases:
        expires = f"{(item.lease_expires_at or 0) - status.now:.1f}s"
        table.add_row(item.id, item.operation, item.lease_owner or "", str(item.attempts), expires)
    out.print(table)


@app.command("process_container_jobs")
def process_container_jobs(
    once: Annotated[bool, typer.Option(help="Exit once no container job is left")] = False,
    poll_interval: Annotated[
        float, typer.Option(min=0.01, help="Seconds between looks for work")
    ] = 1.0,
    max_concurrent: Annotated[int, typer.Option(min=1, help="Container jobs run at once")] = 4,
) -> None:
    """Claim pending container jobs and carry them through launch, monitoring and harvest."""
    configure_logging(_settings())

    async def run(manager: BulkJobManager) -> dict[str, float]:
        service = ContainerJobService(manager)
        processor = container_processor(
            service, manager.settings, concurrency=max_concurrent, poll_interval_s=poll_interval
        )
        err.print(f"processor {processor.owner}: up to {max_concurrent} container jobs at once")
        try:
            await processor.run(once=once)
        finally:
            await processor.aclose()
            await service.aclose()
        stats = processor.stats
        return {"jobs": stats.jobs, "overhead_ms": stats.overhead_per_job_s * 1000}

    stats = _with_manager(run)
    out.print(
        f"processed {stats['jobs']:.0f} container jobs;"
        f" processor overhead {stats['overhead_ms']:.1f} ms per job"
    )


@app.command("cleanup_containers")
def cleanup_containers(
    days: Annotated[int, typer.Option(min=0, help="Delete finished jobs older than this")] = 7,
    dry_run: Annotated[bool, typer.Option(help="Only say what would be removed")] = False,
    force: Annotated[
        bool, typer.Option(help="Also stop containers of unfinished jobs older than --days")
    ] = False,
) -> None:
    """Delete old finished container jobs and remove orphaned containers carrying our labels."""
    from src.services.containers.cleanup import cleanup_containers as run_cleanup

    async def run(manager: BulkJobManager) -> dict[str, Any]:
        service = ContainerJobService(manager)
        try:
            return await run_cleanup(service, days, dry_run=dry_run, force=force)
        finally:
            await service.aclose()

    result = _with_manager(run)
    verb = "would remove" if dry_run else "removed"
    out.print(
        f"{verb} {result['jobs']} old container jobs and {result['orphans']} orphaned"
        f" containers; {result['stopped']} stale jobs {'would be ' if dry_run else ''}stopped"
    )
    for problem in result["errors"]:
        err.print(f"[yellow]{problem}[/yellow]")


@app.command("create_sample_data")
def create_sample_data(
    jobs: Annotated[int, typer.Option(min=1, max=10_000, help="Container jobs to create")] = 20,
    executor_type: Annotated[
        str,
        typer.Option(
            help="local, docker, mock, ... (a host of that type must exist; a"
            " mock host is created when needed)"
        ),
    ] = "mock",
    user: Annotated[str, typer.Option(help="Owner of the sample jobs")] = "admin",
) -> None:
    """Create sample container jobs (a mix of successes, failures and slow ones) to try the
    processor and the dashboard."""
    from src.services.containers.cleanup import create_sample_jobs

    async def run(manager: BulkJobManager) -> int:
        service = ContainerJobService(manager)
        try:
            return len(await create_sample_jobs(service, jobs, executor_type, user))
        finally:
            await service.aclose()

    created = _with_manager(run)
    out.print(f"created {created} sample container jobs on {executor_type}")


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
