"""The `bulkjobs` command line: serve, worker, run, cleanup, token, jobs, webhooks and the
container commands (process_container_jobs, cleanup_containers, create_sample_data,
containers)."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich import box
from rich.table import Column, Table

from src.cli_common import (
    describe_store,
    err,
    out,
    settings_or_exit,
    token_command,
    with_manager,
)
from src.cli_containers import containers_app
from src.cli_report import EXIT_BAD_SPEC, Outcome, StageBars, outcome, print_outcome
from src.cli_webhooks import webhooks_app
from src.services.auth import MAX_TOKEN_DAYS, create_api_token, token_id
from src.services.bulk_job_manager import BulkJobManager
from src.services.containers.service import ContainerJobService
from src.services.domain import TERMINAL_JOB_STATUSES, ApiToken, Job, JobDeletion
from src.services.errors import InvalidInput
from src.services.export_files import SWEEP_GRACE_S
from src.services.job_types import job_types
from src.services.logs import configure_logging
from src.services.reports import JobReport, job_report
from src.services.worker.sources import BULK_JOB

T = TypeVar("T")

app = typer.Typer(
    help="Multi-stage bulk jobs with live progress and exports.", no_args_is_help=True
)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
jobs_app = typer.Typer(help="Inspect bulk jobs.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(jobs_app, name="jobs")
app.add_typer(containers_app, name="containers")
app.add_typer(webhooks_app, name="webhooks")

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
    from src.server import server_options

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
        out.print(f"Serving on http://{host}:{port}/", highlight=False)
        out.print(f"Create a token: {token_command(settings)}", highlight=False, soft_wrap=True)
    configure_logging(settings)
    # log_config=None: uvicorn keeps the handlers configured above (format, redaction).
    uvicorn.run(
        create_app(settings), host=host, port=port, log_config=None, **server_options(settings)
    )


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
            " bulk_job, container_job, webhook_delivery, host_health and, without --burst,"
            " retention)",
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Items of each kind (work items, bulk jobs, ...) run at once")
    ] = 4,
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
        from src.services.worker.service import container_worker, run_until_signal

        scheduler, source = await container_worker(manager, max_concurrent, poll_interval)
        err.print(f"processor {scheduler.worker_id}: up to {max_concurrent} container jobs at once")
        try:
            await run_until_signal(scheduler, burst=once)
        finally:
            await manager.close_executors()
        stats = source.processor.stats
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
def cleanup(
    grace: Annotated[
        float,
        typer.Option(
            min=0, help="Leave files touched in the last GRACE seconds (a writer may be at it)"
        ),
    ] = SWEEP_GRACE_S,
    job_retention_days: Annotated[
        float | None,
        typer.Option(
            min=0, help="Delete jobs finished this many days ago (default: the setting; 0: none)"
        ),
    ] = None,
) -> None:
    """Delete jobs finished more than BULKJOBS_JOB_RETENTION_DAYS ago (with their files),
    expired exports, then leftover files (partial or unregistered exports, working files of
    finished jobs with no export left); the server and workers also do this periodically."""

    async def run(manager: BulkJobManager) -> tuple[int, int, int, int]:
        jobs = await manager.delete_expired_jobs(job_retention_days)
        removed = await manager.cleanup_expired_exports()
        swept = await manager.sweep_files(grace)
        return jobs, removed, swept.files, swept.bytes

    jobs, removed, files, size = _with_manager(run)
    out.print(f"deleted {jobs} finished jobs past their retention")
    out.print(f"removed {removed} expired exports")
    out.print(f"swept {files} leftover files ({size} bytes)")


@app.command("run")
def run_spec(
    spec: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Job spec JSON")],
) -> None:
    """Run one job to the end in this process, with a progress bar per stage.

    SPEC.json: {"job_type": "http_fetch", "user_id": "me", "job_data": {...}}. Exit codes:
    0 completed, 1 the job failed or was cancelled (or the service refused it), 2 a bad spec
    or configuration, 3 completed but every item failed.
    """
    body = _read_spec(spec)
    result = _with_manager(lambda manager: _run_with_progress(manager, body))
    raise typer.Exit(print_outcome(result, out))


def _read_spec(spec: Path) -> dict[str, Any]:
    """The spec with its job_data checked; exit 2 naming the problem otherwise."""
    try:
        body = json.loads(spec.read_text())
        if not isinstance(body, dict):
            raise InvalidInput("spec", "must be a JSON object")
        job_type = str(body.get("job_type", ""))
        body["job_data"] = job_types.validate_job_data(job_type, body.get("job_data") or {})
    except json.JSONDecodeError as exc:
        err.print(f"[red]{spec}: not valid JSON: {exc}[/red]")
        raise typer.Exit(EXIT_BAD_SPEC) from None
    except InvalidInput as exc:
        err.print(f"[red]{spec}: {exc}[/red]")
        raise typer.Exit(EXIT_BAD_SPEC) from None
    return body


async def _run_with_progress(manager: BulkJobManager, body: dict[str, Any]) -> Outcome:
    job_type = str(body["job_type"])
    job_id = await manager.create_bulk_job(
        job_type=job_type,
        user_id=str(body.get("user_id", "cli")),
        job_data=body["job_data"],
        stages=body.get("stages") or job_types.get(job_type).stages,
        rate_limited=False,  # the operator at the terminal, as an admin
    )
    return await _follow(manager, job_id, job_type)


async def _follow(manager: BulkJobManager, job_id: str, job_type: str) -> Outcome:
    """Run the job here to its end, with a bar per stage; its outcome."""
    kind = job_types.get(job_type)
    run = asyncio.create_task(
        manager.process_job_with_stages(
            job_id, kind.processors, (BULK_JOB, *kind.kinds), kind.stage_retries
        )
    )
    try:
        with StageBars(err) as bars:
            while not run.done():
                bars.update(await manager.get_job_status(job_id))
                await asyncio.wait({run}, timeout=0.2)
            bars.update(await manager.get_job_status(job_id))
    finally:
        # Ctrl-C: stop the run first, so it hands the job back while the store is open.
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    await run
    return await outcome(manager, job_id)


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option(help="The user id the token acts as")],
    admin: Annotated[bool, typer.Option(help="May manage hosts, templates and all jobs")] = False,
    name: Annotated[str, typer.Option(help="A label for the token")] = "",
    expires_in_days: Annotated[
        float | None,
        typer.Option(min=0.0001, max=MAX_TOKEN_DAYS, help="Refuse the token after this many days"),
    ] = None,
) -> None:
    """Create an API token; prints the token alone on stdout (its id on stderr)."""

    async def create(manager: BulkJobManager) -> str:
        return await create_api_token(await manager.store(), user, admin, name, expires_in_days)

    raw = _with_manager(create)
    sys.stdout.write(raw + "\n")
    sys.stdout.flush()
    err.print(f"token id {token_id(raw)} (for `bulkjobs token revoke`)", highlight=False)


@token_app.command("list")
def token_list(
    user: Annotated[str | None, typer.Option(help="Only this user's tokens")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 100,
) -> None:
    """List API tokens, newest first: id, user, name, created, expires, revoked (never the
    secret)."""

    async def listed(manager: BulkJobManager) -> list[ApiToken]:
        return await (await manager.store()).list_tokens(user, limit)

    table = Table(
        *(Column(name, no_wrap=True) for name in ("id", "user", "admin", "name")),
        *(Column(name, no_wrap=True) for name in ("created", "expires", "revoked")),
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for token in _with_manager(listed):
        table.add_row(
            token.token_id,
            token.user_id,
            "yes" if token.is_admin else "",
            token.name,
            _when(token.created_at),
            _when(token.expires_at) or "never",
            _when(token.revoked_at),
        )
    out.print(table)


def _when(moment: datetime | None) -> str:
    return "" if moment is None else f"{moment:%Y-%m-%d %H:%M}"


@token_app.command("revoke")
def token_revoke(
    token: Annotated[str, typer.Argument(help="The token id `bulkjobs token list` shows")],
) -> None:
    """Revoke an API token: it is refused from now on (servers that cached it within 10 s)."""

    async def revoke(manager: BulkJobManager) -> ApiToken:
        return await (await manager.store()).revoke_token(token)

    revoked = _with_manager(revoke)
    out.print(f"revoked token {revoked.token_id} of {revoked.user_id} ({revoked.name})")


@jobs_app.command("list")
def jobs_list(
    user: Annotated[str, typer.Option(help="Whose jobs")],
    status: Annotated[str | None, typer.Option(help="Only this status")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
) -> None:
    """List a user's jobs, newest first, with their full ids."""
    reports = _with_manager(lambda manager: manager.get_user_jobs(user, status, None, limit))
    # Full ids, never cut: they are what the other commands take (a unique start works too).
    table = Table(
        Column("job id", no_wrap=True),
        Column("type", no_wrap=True),
        Column("status", no_wrap=True),
        Column("items", overflow="fold"),
        Column("created", no_wrap=True),
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for report in reports:
        total = report.items_total if report.items_total is not None else "?"
        status = str(report.status)
        if report.status not in TERMINAL_JOB_STATUSES:
            status += f" {report.progress:.0%}"
        table.add_row(
            report.job_id,
            report.job_type,
            status,
            f"{report.items_completed}/{report.items_failed}/{total}",
            f"{report.created_at:%m-%d %H:%M}",
        )
    out.print(table)
    sys.stdout.flush()  # the table before the note, where both go to one terminal
    where = describe_store(_settings())
    err.print(f"{len(reports)} jobs of {user} in {where}; items: ok/failed/total", highlight=False)


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[str, typer.Argument(help="The job id, or a unique start of it")],
) -> None:
    """Show one job with its stages and exports as JSON."""

    async def show(manager: BulkJobManager) -> JobReport:
        return job_report(await manager.find_job(job_id))

    out.print_json(_with_manager(show).model_dump_json())


@jobs_app.command("delete")
def jobs_delete(
    job_id: Annotated[str, typer.Argument(help="The job id, or a unique start of it")],
) -> None:
    """Delete a finished job now, with its stages, exports, stage outputs and container
    jobs (a pending or running job: cancel it first)."""

    async def delete(manager: BulkJobManager) -> tuple[str, JobDeletion]:
        job = await manager.find_job(job_id)
        return job.id, await manager.delete_job(job.id)

    deleted, counts = _with_manager(delete)
    out.print(
        f"deleted job {deleted} ({counts.exports} exports, {counts.container_jobs} container jobs)"
    )


@jobs_app.command("retry")
def jobs_retry(
    job_id: Annotated[str, typer.Argument(help="The job id, or a unique start of it")],
    run: Annotated[
        bool, typer.Option("--run", help="Run the new job here to its end, as `run` does")
    ] = False,
) -> None:
    """Start a new job over only the failed items of an ended job (linked by retry_of);
    prints its id. Without --run a worker or the server runs it."""

    async def retry(manager: BulkJobManager) -> Outcome | Job:
        # The operator at the terminal, as an admin: not rate limited.
        new_id = await manager.retry_failed(job_id, rate_limited=False, job_types=job_types)
        job = await manager.find_job(new_id)
        return await _follow(manager, new_id, job.job_type) if run else job

    result = _with_manager(retry)
    if isinstance(result, Outcome):
        raise typer.Exit(print_outcome(result, out))
    sys.stdout.write(result.id + "\n")
    err.print(
        f"job {result.id} retries the failed items of job {result.retry_of};"
        " a worker (`bulkjobs worker`, or the server's) runs it",
        highlight=False,
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
