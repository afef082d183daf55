"""What the CLI shows a newcomer: `run`'s failed items, clocks, export path and exit codes;
full and shortened job ids; which store a listing read; help without type noise; a token
hint that works as printed. Real SQLite files, typer's runner or a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from src.cli import app
from src.cli_report import stage_clock
from src.config import get_settings
from src.services.auth import TokenCache
from src.services.domain import NewJob, StageStatus, utcnow
from src.services.reports import StageReport
from src.services.store.local import LocalStore
from tests.browser.server import BULKJOBS, free_port

runner = CliRunner()
#: A closed port on loopback: every fetch fails at once with a connection error.
CLOSED = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("BULKJOBS_DB_PATH", str(tmp_path / "cli.db"))
    monkeypatch.setenv("BULK_EXPORT_PATH", str(tmp_path / "exports"))
    monkeypatch.setenv("BULK_PROGRESS_INTERVAL_MS", "20")
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("BULKJOBS_HTTP_FETCH_ALLOWED_HOSTS", "127.0.0.1")  # the closed port
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def run_spec(directory: Path, spec: dict[str, object]) -> tuple[int, str]:
    path = directory / "spec.json"
    path.write_text(json.dumps(spec))
    result = runner.invoke(app, ["run", str(path)])
    return result.exit_code, result.stdout


def job_id_of(stdout: str) -> str:
    found = re.search(r"^job ([0-9a-f]{32}): ", stdout, re.MULTILINE)
    assert found, stdout
    return found.group(1)


def test_every_item_failed_shows_each_reason_and_exits_3(environment: Path) -> None:
    urls = [f"{CLOSED}/a", f"{CLOSED}/b"]
    data = {"urls": urls, "retries": 0, "timeout_s": 5}
    code, stdout = run_spec(environment, {"job_type": "http_fetch", "job_data": data})
    assert code == 3, stdout
    assert "completed" in stdout and "2 items failed" in stdout
    for url in urls:
        assert re.search(rf"failed: {re.escape(url)}: ConnectError", stdout), stdout
    # The export line names the file that is really on disk.
    [path] = re.findall(r"^export \S+: (\S+) \(csv, \d+ bytes\)$", stdout, re.MULTILINE)
    assert Path(path).is_file()
    assert Path(path).parent.name == job_id_of(stdout)
    assert "ConnectError" in Path(path).read_text()


def test_some_failed_items_list_the_first_few_then_a_count(environment: Path) -> None:
    data = {"items": 30, "delay_ms": 0, "fail_every": 3}
    code, stdout = run_spec(environment, {"job_type": "sample", "job_data": data})
    assert code == 0, stdout
    assert "10 items failed" in stdout
    assert stdout.count("  failed: item ") == 5
    assert "failed: item 3: synthetic failure" in stdout
    assert "... and 5 more failed items" in stdout


def test_a_failed_job_exits_1_with_its_error(environment: Path) -> None:
    data = {"image": "local", "command": "true", "items": ["a"], "host": "no-such-host"}
    code, stdout = run_spec(environment, {"job_type": "container_batch", "job_data": data})
    assert code == 1, stdout
    assert ": failed" in stdout
    assert "error in stage initialization: " in stdout and "no-such-host" in stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{nope", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        ('{"job_type": "sample", "job_data": {"items": -1}}', "job_data.items"),
        ('{"job_type": "nope"}', "unknown job type"),
    ],
)
def test_a_bad_spec_exits_2_and_runs_nothing(environment: Path, text: str, message: str) -> None:
    spec = environment / "spec.json"
    spec.write_text(text)
    result = runner.invoke(app, ["run", str(spec)])
    assert result.exit_code == 2
    assert message in result.output
    listed = runner.invoke(app, ["jobs", "list", "--user", "cli"])
    assert "0 jobs of cli" in listed.output


def stage(status: StageStatus, progress: float, started_s_ago: float | None) -> StageReport:
    now = utcnow()
    started = None if started_s_ago is None else now - timedelta(seconds=started_s_ago)
    done = status == StageStatus.COMPLETED
    return StageReport(
        name="content_fetch",
        status=status,
        progress=progress,
        items_total=100,
        items_completed=int(progress * 100),
        items_failed=0,
        started_at=started,
        completed_at=now if done else None,
        error_message=None,
        metadata={},
    )


def test_each_stage_shows_its_elapsed_time_and_time_left() -> None:
    now = utcnow()
    assert (
        stage_clock(stage(StageStatus.PROCESSING, 0.25, 30), now) == "30 s elapsed, 1 min 30 s left"
    )
    assert stage_clock(stage(StageStatus.PROCESSING, 0.0, 5), now) == "5 s elapsed, - left"
    assert stage_clock(stage(StageStatus.COMPLETED, 1.0, 75), now) == "took 1 min 15 s"
    assert stage_clock(stage(StageStatus.PENDING, 0.0, None), now) == ""


def test_listing_shows_full_ids_and_its_store_and_show_takes_a_prefix(environment: Path) -> None:
    data = {"items": 2, "delay_ms": 0}
    job_ids = [job_id_of(run_spec(environment, {"job_type": "sample", "job_data": data})[1])]
    job_ids.append(job_id_of(run_spec(environment, {"job_type": "sample", "job_data": data})[1]))
    listed = runner.invoke(app, ["jobs", "list", "--user", "cli"])
    for job_id in job_ids:
        assert job_id in listed.stdout  # whole, at 80 columns
    assert f"2 jobs of cli in the SQLite file {environment / 'cli.db'}" in listed.output
    shown = runner.invoke(app, ["jobs", "show", job_ids[0][:8]])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["job_id"] == job_ids[0]
    missing = runner.invoke(app, ["jobs", "show", "zzzz"])
    assert missing.exit_code == 1 and "job zzzz not found" in missing.output


def test_an_ambiguous_prefix_says_how_many_jobs_start_with_it(environment: Path) -> None:
    async def create() -> None:
        async with LocalStore(environment / "cli.db") as store:
            for job_id in ("abc-1", "abc-2", "abd"):
                new = NewJob(
                    job_type="sample", user_id="u", job_data={}, stages=["cleanup"], job_id=job_id
                )
                await store.create(new, None)

    asyncio.run(create())
    result = runner.invoke(app, ["jobs", "show", "ab"])
    assert result.exit_code == 1
    assert "'ab' is the start of 3 job ids; give more of it" in result.output
    result = runner.invoke(app, ["jobs", "show", "abd"])
    assert json.loads(result.stdout)["job_id"] == "abd"


def test_the_default_database_is_the_same_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BULKJOBS_DB_PATH")
    monkeypatch.delenv("BULK_EXPORT_PATH")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "home-data"))
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    get_settings.cache_clear()
    job_id = job_id_of(run_spec(first, {"job_type": "sample", "job_data": {"items": 1}})[1])
    monkeypatch.chdir(second)
    get_settings.cache_clear()
    listed = runner.invoke(app, ["jobs", "list", "--user", "cli"])
    assert job_id in listed.stdout
    assert str(tmp_path / "home-data" / "bulkjobs" / "bulkjobs.db") in listed.output


def test_help_shows_no_type_beside_flags() -> None:
    for command in ([], ["worker"], ["token", "create"], ["jobs", "show"]):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0
        assert "--help" in result.stdout
        assert "<bool>" not in result.stdout and "BOOLEAN" not in result.stdout


def read_until(process: subprocess.Popen[str], pattern: str) -> str:
    """Lines of the server's output until one matches (bounded by the process ending)."""
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if re.search(pattern, line):
            return line
    raise AssertionError(f"no line matched {pattern!r}:\n{''.join(seen)}")


def serve_once(env: dict[str, str], pattern: str) -> str:
    """Start `bulkjobs serve`, return its first output line matching `pattern`, stop it."""
    command = [str(BULKJOBS), "serve", "--port", str(free_port())]
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        try:
            return read_until(process, pattern)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:  # pragma: no cover
                process.kill()


def test_the_second_start_prints_a_token_command_that_works_as_printed(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "BULKJOBS_DB_PATH": str(tmp_path / "served.db"),
        "BULK_EXPORT_PATH": str(tmp_path / "exports"),
        "BULKJOBS_EMBEDDED_WORKER": "false",
    }
    serve_once(env, r"^Open: ")
    hint = serve_once(env, r"^Create a token: ").split(": ", 1)[1].strip()
    # Run as printed, from another directory, with none of the server's settings around.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    clean = {k: v for k, v in env.items() if not k.startswith(("BULK", "CONVEX"))}
    made = subprocess.run(
        ["bash", "-c", hint], cwd=elsewhere, env=clean, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("bjt_")
    assert shlex.split(hint)[0].startswith("BULKJOBS_DB_PATH=")
    assert asyncio.run(owner_of(tmp_path / "served.db", made.stdout.strip())) == "alice"


async def owner_of(db: Path, raw_token: str) -> str | None:
    async with LocalStore(db) as store:
        token = await TokenCache().authenticate(store, raw_token)
    return None if token is None else token.user_id
