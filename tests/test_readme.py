"""The README is the user's manual, so it is tested like code.

- Its route tables list every route of the app's OpenAPI document, and every route they list
  exists.
- Its shell examples run as written: each ```bash block runs, line by line, in a fresh
  directory (with `.venv` in it, as in a clone), against a real `bulkjobs serve` on a loopback
  port. The test only does what a reader does: it fills in the placeholders a reader fills in
  (`bjt_...`, the job id `3f2c9a61`, the export id `kF3xQ9...`), talks to the server's port
  instead of 8000, creates the hosts an example names, waits for a job the text says takes a
  few seconds, and serves https://example.com from loopback (no internet in tests). A block
  showing options in brackets (`[--burst]`) is a synopsis, not an example; the few blocks that
  need a Convex deployment or install tooling are listed in SKIPPED with the reason. Files
  the text introduces as "`name.json`:" are written from the JSON block that follows.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from src.app import create_app
from src.config import load_settings
from src.services.domain import new_id
from src.services.domain.containers import ExecutorHost
from src.services.store.local import LocalStore
from tests.browser.server import Server, serve
from tests.loopback_http import QuietHandler, serve_http

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)
FILE_INTRO = re.compile(r"`([\w.-]+\.json)`:\s*$")
ROUTE = re.compile(
    r"`((?:GET|POST|PATCH|DELETE|PUT|HEAD)(?:/(?:GET|POST|PATCH|DELETE|PUT|HEAD))*) (/[^`\s]*)`"
)
JOB_ID = re.compile(r"\b([0-9a-f]{32})\b")
EXPORT_ID = re.compile(r'"export_id":"([\w-]+)"')
ASSIGNMENT = re.compile(r"^([A-Z_]+)=(\S*)")

#: First lines of the shell blocks that are not run, and why.
SKIPPED = {
    "make run": "make run is `bulkjobs serve` (started below as it does); make test is this suite",
    "npm ci\nnpx convex deploy": "deploys to a Convex deployment, which needs its deploy key",
    "cp examples/convex-frontend/auth.config.ts": "sets up a Convex deployment's identity provider",
    "npm ci\nnpm run build:example": "installs the Node tooling and serves a page until stopped",
}
#: What a reader puts in place of the placeholders the examples show.
TOKEN_PLACEHOLDER = "bjt_..."
JOB_PLACEHOLDER = "3f2c9a61"
EXPORT_PLACEHOLDER = "kF3xQ9..."


@dataclass
class Block:
    language: str
    text: str
    #: The file the text introduces this block as ("`batch.json`:"), if any.
    file: str | None

    @property
    def commands(self) -> list[str]:
        """Its shell commands: continuation lines joined, blank lines dropped."""
        joined = self.text.replace("\\\n", " ")
        return [line for line in joined.splitlines() if line.strip()]

    def starts_with(self, start: str) -> bool:
        return self.text.startswith(start)


def readme_blocks() -> list[Block]:
    text = README.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        intro = FILE_INTRO.search(before)
        blocks.append(Block(match.group(1), match.group(2), intro.group(1) if intro else None))
    return blocks


def shell_blocks() -> list[Block]:
    return [block for block in readme_blocks() if block.language == "bash"]


def is_synopsis(block: Block) -> bool:
    return "[--" in block.text


def skip_reason(block: Block) -> str | None:
    return next((why for start, why in SKIPPED.items() if block.starts_with(start)), None)


def examples() -> list[Block]:
    return [b for b in shell_blocks() if not is_synopsis(b) and skip_reason(b) is None]


def normalized(method: str, path: str) -> tuple[str, str]:
    return method, re.sub(r"\{[^}]*\}", "{}", path.split("?", 1)[0])


def readme_routes() -> set[tuple[str, str]]:
    """Routes named in the README's tables (`GET /x`, `GET/POST /x`, `{id}` for any name)."""
    found = set()
    for line in README.read_text().splitlines():
        if line.startswith("|"):
            for methods, path in ROUTE.findall(line):
                found |= {normalized(method, path) for method in methods.split("/")}
    return found


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    root = tmp_path_factory.mktemp("routes")
    settings = load_settings(
        bulkjobs_db_path=root / "x.db", bulk_export_path=root / "e", bulkjobs_embedded_worker=False
    )
    yield create_app(settings)


def documented_routes(app: FastAPI) -> set[tuple[str, str]]:
    return {
        normalized(method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }


def test_the_route_tables_list_every_route_of_the_openapi_document(app: FastAPI) -> None:
    missing = sorted(documented_routes(app) - readme_routes())
    assert missing == [], f"routes in OpenAPI but not in the README's tables: {missing}"


def test_every_route_in_the_tables_exists(app: FastAPI) -> None:
    """Routes outside the OpenAPI document (streams, metrics, docs) are asked for: a route
    that does not exist is a 404 or 405 before any token is looked at."""
    unknown = readme_routes() - documented_routes(app)
    with TestClient(app) as client:
        for method, path in sorted(unknown):
            with client.stream(method, path.replace("{}", "x")) as response:
                assert response.status_code not in (404, 405), (method, path)


def test_every_shell_block_is_an_example_a_synopsis_or_skipped_for_a_reason() -> None:
    blocks = shell_blocks()
    assert len(examples()) >= 5
    for block in blocks:
        assert is_synopsis(block) or skip_reason(block) or block in examples()
    for start in SKIPPED:
        assert any(block.starts_with(start) for block in blocks), f"no block starts {start!r}"


class ExamplePage(QuietHandler):
    """What https://example.com serves, from loopback."""

    def do_GET(self) -> None:
        self.reply(
            200, b"<html><head><title>Example Domain</title></head><body>Example</body></html>"
        )


@pytest.fixture(scope="module")
def example_com() -> Iterator[str]:
    with serve_http(ExamplePage) as base:
        yield f"{base}/"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if shutil.which("curl") is None:
        pytest.skip(reason="the README's examples use curl, which is not installed")
    with serve(tmp_path_factory.mktemp("readme-server")) as started:
        yield started


@dataclass
class Reader:
    """A reader at a shell: a working directory, its variables, what the commands printed."""

    directory: Path
    env: dict[str, str]
    example_com: str
    server: Server | None = None
    printed: list[str] = field(default_factory=list)

    def write_files(self) -> None:
        for block in readme_blocks():
            if block.file:
                text = block.text.replace("https://example.com", self.example_com)
                (self.directory / block.file).write_text(text)

    def fill(self, command: str) -> str:
        command = command.replace("localhost:8000", self.server.base[7:] if self.server else "")
        if JOB_PLACEHOLDER in command:
            command = command.replace(JOB_PLACEHOLDER, self.last(JOB_ID)[:8])
        if EXPORT_PLACEHOLDER in command:
            command = command.replace(EXPORT_PLACEHOLDER, self.last(EXPORT_ID))
        if TOKEN_PLACEHOLDER in command and self.server is not None:
            command = command.replace(TOKEN_PLACEHOLDER, self.server.admin_token)
        return command

    def last(self, pattern: re.Pattern[str]) -> str:
        for output in reversed(self.printed):
            found = pattern.findall(output)
            if found:
                return str(found[-1])
        raise AssertionError(f"no earlier output matched {pattern.pattern}: {self.printed}")

    def run(self, block: Block) -> None:
        for line in block.commands:
            if line.lstrip().startswith("#"):  # the output the README shows, not a command
                continue
            command = self.fill(line)
            assignment = ASSIGNMENT.match(command)
            if assignment:  # a variable the next lines use, as a shell session keeps it
                self.env[assignment.group(1)] = assignment.group(2)
                continue
            done = subprocess.run(
                ["bash", "-o", "pipefail", "-c", command],
                cwd=self.directory,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, (
                f"{line}\nexit {done.returncode}\n{done.stdout}{done.stderr}"
            )
            assert '"detail":' not in done.stdout, f"{line}\nrefused: {done.stdout}"
            self.printed.append(done.stdout + done.stderr)
            if " -X POST " in command and "/bulk-jobs" in command:
                self.wait_for_job(self.last(JOB_ID))

    def wait_for_job(self, job_id: str) -> dict[str, object]:
        """What a reader does between starting a job and fetching its export: wait."""
        assert self.server is not None
        with self.server.api(self.server.admin_token) as api:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                job: dict[str, object] = api.get(f"/bulk-jobs/{job_id}").json()
                if job["status"] in ("completed", "failed", "cancelled"):
                    assert job["status"] == "completed", job
                    return job
                time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not finish")


def reader(tmp_path: Path, example_com: str, env: dict[str, str]) -> Reader:
    os.symlink(Path(sys.executable).parents[1], tmp_path / ".venv")
    found = Reader(tmp_path, env, example_com)
    found.write_files()
    return found


def block_starting(start: str) -> Block:
    [block] = [block for block in examples() if block.starts_with(start)]
    return block


def test_the_quick_start_and_container_batch_curl_examples(
    tmp_path: Path, server: Server, example_com: str
) -> None:
    shell = reader(tmp_path, example_com, {**os.environ})
    shell.server = server
    shell.run(block_starting("TOKEN="))
    downloaded = [path for path in tmp_path.iterdir() if path.name.startswith("sample_")]
    assert len(downloaded) == 1 and len(json.loads(downloaded[0].read_text())) == 200

    shell.env["TOKEN"] = server.admin_token  # set by the Quick start above
    shell.run(block_starting("curl -s -X POST localhost:8000/bulk-jobs"))
    job = shell.wait_for_job(shell.last(JOB_ID))
    [export] = job["exports"]  # type: ignore[misc]  # JSON
    with server.api(server.admin_token) as api:
        body = api.get(f"/bulk-jobs/{job['job_id']}/export/{export['export_id']}").text
    header = next(csv.reader(io.StringIO(body)))
    # The column the README's sentence about this example names, and the parsed value.
    said = re.search(r"CSV gets an `([\w.]+)` column", README.read_text())
    assert said is not None and said.group(1) in header
    rows = list(csv.DictReader(io.StringIO(body)))
    assert [row["output.chars"] for row in rows] == ["5", "4", "5"]


def cli_env(tmp_path: Path) -> dict[str, str]:
    """A reader's environment without the suite's paths: the default per-user data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BULK", "CONVEX"))}
    # example.com is served from loopback here, which the fetch policy refuses by default.
    allowed = {"BULKJOBS_HTTP_FETCH_ALLOWED_HOSTS": "127.0.0.1"}
    return env | allowed | {"XDG_DATA_HOME": str(tmp_path / "data-home"), "COLUMNS": "100"}


def test_the_command_line_examples(tmp_path: Path, example_com: str) -> None:
    shell = reader(tmp_path, example_com, cli_env(tmp_path))
    shell.run(block_starting(".venv/bin/bulkjobs run spec.json"))
    assert re.search(r"job [0-9a-f]{32}: completed", shell.printed[0])
    assert "1 jobs of me in the SQLite file" in shell.printed[1]
    shown = json.loads(shell.printed[2])
    assert shown["job_id"] == shell.last(JOB_ID) and shown["status"] == "completed"


def test_the_container_command_examples(tmp_path: Path, example_com: str) -> None:
    shell = reader(tmp_path, example_com, cli_env(tmp_path))
    db = tmp_path / "data-home" / "bulkjobs" / "bulkjobs.db"
    asyncio.run(create_hosts(db, "docker-1", "docker-2"))  # the hosts the example names
    shell.run(block_starting(".venv/bin/bulkjobs containers bulk-create"))
    assert len((tmp_path / "ids.txt").read_text().split()) == 1000
    assert "deleted 1000 container jobs" in shell.printed[3]
    shell.run(block_starting(".venv/bin/bulkjobs create_sample_data"))
    assert "created 20 sample container jobs on mock" in shell.printed[-3]
    assert "processed 20 container jobs" in shell.printed[-2]


async def create_hosts(db: Path, *names: str) -> None:
    async with LocalStore(db) as store:
        for name in names:
            host = {"id": new_id(), "name": name, "executor_type": "mock"}
            await store.host_create(ExecutorHost.model_validate(host))


def test_the_webhook_command_examples(tmp_path: Path, example_com: str) -> None:
    shell = reader(tmp_path, example_com, cli_env(tmp_path))
    shell.run(block_starting(".venv/bin/bulkjobs webhooks create"))
    *_, secret = shell.printed[0].strip().splitlines()
    assert secret.startswith("whsec_")
    endpoint_id = shell.printed[0].split()[1]
    assert endpoint_id in shell.printed[1] and "active" in shell.printed[1]
