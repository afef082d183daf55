"""What `bulkjobs run` shows and returns: a progress bar per stage with its elapsed time and
time left, then the outcome (failed items with their reasons, the export files on disk) and
the exit code. Kept apart from how the job is executed, which is the runner's business."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from src.services.bulk_job_manager import BulkJobManager
from src.services.domain import BulkJobStatus, StageStatus, utcnow
from src.services.errors import NotFound
from src.services.reports import JobReport, StageReport, stage_times
from src.services.runner import ATTEMPTS, FAILED_ITEMS, LAST_ERROR

#: Failed items `run` lists with their reasons before it only counts the rest.
SHOWN_FAILURES = 5

#: Exit codes of `bulkjobs run` (the README lists them).
EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_BAD_SPEC = 2
EXIT_ALL_ITEMS_FAILED = 3


def duration(seconds: float | None) -> str:
    """`42 s`, `3 min 05 s`, `2 h 07 min`; `-` when unknown."""
    if seconds is None:
        return "-"
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def stage_counts(stage: StageReport) -> str:
    total = "?" if stage.items_total is None else stage.items_total
    return f"{stage.status} {stage.items_completed}/{total} ok, {stage.items_failed} failed"


def stage_clock(stage: StageReport, now: datetime) -> str:
    elapsed, left = stage_times(stage, now)
    if elapsed is None:
        return ""
    if stage.status == StageStatus.PROCESSING:
        return f"{duration(elapsed)} elapsed, {duration(left)} left"
    return f"took {duration(elapsed)}"


class StageBars:
    """Live bars on the console, one per stage, redrawn from each job report it is given."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description:<20}"),
            BarColumn(),
            TextColumn("{task.fields[counts]}"),
            TextColumn("{task.fields[clock]}", style="cyan"),
            console=console,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> StageBars:
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def update(self, report: JobReport | None) -> None:
        now = utcnow()
        for stage in report.stages if report else []:
            if stage.name not in self._tasks:
                self._tasks[stage.name] = self._progress.add_task(
                    stage.name, total=1.0, counts="", clock=""
                )
            done = stage.status in (StageStatus.COMPLETED, StageStatus.SKIPPED)
            self._progress.update(
                self._tasks[stage.name],
                completed=1.0 if done else stage.progress,
                counts=stage_counts(stage),
                clock=stage_clock(stage, now),
            )


@dataclass(frozen=True)
class Outcome:
    """A finished job and where its export files are (None: gone or expired)."""

    report: JobReport
    export_paths: dict[str, Path | None]


async def outcome(manager: BulkJobManager, job_id: str) -> Outcome:
    report = await manager.get_job_status(job_id)
    if report is None:
        raise NotFound(f"job {job_id} disappeared while it ran")
    paths = {
        export.export_id: await manager.get_export_file_path(export.export_id)
        for export in report.exports
    }
    return Outcome(report, paths)


def failed_items(report: JobReport) -> list[dict[str, str]]:
    """The failed items the stages recorded with their reasons, each item once, in stage
    order (a later stage that passes a failed item on records it again)."""
    seen: dict[str, dict[str, str]] = {}
    for stage in report.stages:
        for entry in _recorded(stage.metadata):
            seen.setdefault(entry["item"], entry)
    return list(seen.values())


def _recorded(metadata: dict[str, Any]) -> list[dict[str, str]]:
    entries = metadata.get(FAILED_ITEMS)
    if not isinstance(entries, list):
        return []
    return [
        {"item": str(entry.get("item", "?")), "error": str(entry.get("error", ""))}
        for entry in entries
        if isinstance(entry, dict)
    ]


def failed_count(report: JobReport) -> int:
    """Items that failed: the most any stage counted (stages pass items on)."""
    return max((stage.items_failed for stage in report.stages), default=0)


def every_item_failed(report: JobReport) -> bool:
    """Some stage had items and none of them succeeded."""
    return any(s.items_failed > 0 and s.items_completed == 0 for s in report.stages)


def exit_code(report: JobReport) -> int:
    if report.status != BulkJobStatus.COMPLETED:
        return EXIT_JOB_FAILED
    return EXIT_ALL_ITEMS_FAILED if every_item_failed(report) else EXIT_OK


def print_outcome(result: Outcome, console: Console) -> int:
    """Print the job's end, its failed items and exports; returns the exit code."""
    report = result.report
    took = job_elapsed(report)
    failed = failed_count(report)
    summary = f"job {report.job_id}: {report.status}"
    if took is not None:
        summary += f" in {duration(took)}"
    if failed:
        summary += f"; {failed} items failed"
    console.print(summary, highlight=False)
    if report.error_message:
        where = f" in stage {report.failed_stage}" if report.failed_stage else ""
        console.print(f"error{where}: {report.error_message}", highlight=False, markup=False)
    _print_retried_stages(report, console)
    _print_failures(report, failed, console)
    for export in report.exports:
        path = result.export_paths.get(export.export_id)
        where = str(path) if path is not None else "(file gone or expired)"
        console.print(
            f"export {export.export_id}: {where} ({export.format}, {export.size_bytes} bytes)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    return exit_code(report)


def _print_retried_stages(report: JobReport, console: Console) -> None:
    """Stages that took more than one attempt (their retry policy started them again)."""
    for stage in report.stages:
        attempts = stage.metadata.get(ATTEMPTS)
        if isinstance(attempts, int) and attempts > 1:
            console.print(
                f"stage {stage.name}: {attempts} attempts; last error:"
                f" {stage.metadata.get(LAST_ERROR, '?')}",
                highlight=False,
                markup=False,
            )


def _print_failures(report: JobReport, failed: int, console: Console) -> None:
    recorded = failed_items(report)
    for entry in recorded[:SHOWN_FAILURES]:
        console.print(f"  failed: {entry['item']}: {entry['error']}", highlight=False, markup=False)
    rest = failed - min(len(recorded), SHOWN_FAILURES)
    if rest > 0:
        console.print(
            f"  ... and {rest} more failed items (the export has every item's outcome)",
            highlight=False,
        )


def job_elapsed(report: JobReport) -> float | None:
    if report.started_at is None:
        return None
    end = report.completed_at or report.updated_at
    return max(0.0, (end - report.started_at).total_seconds())
