"""The built-in http_fetch job type against a real local HTTP server (on 127.0.0.1, allowed
through BULKJOBS_HTTP_FETCH_ALLOWED_HOSTS where a test needs it fetched)."""

from __future__ import annotations

import csv
import io
import json
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from src.config import Settings
from src.services import fetch_policy
from src.services.bulk_job_manager import BulkJobManager
from src.services.domain import BulkJobStatus
from src.services.errors import InvalidInput
from src.services.job_types import http_fetch, job_types
from tests.loopback_http import QuietHandler, serve_http


class Handler(QuietHandler):
    flaky_hits = 0
    #: Every path asked for, in order.
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        Handler.seen.append(self.path)
        if self.path.startswith("/page/"):
            name = self.path.rsplit("/", 1)[1]
            self._send(200, f"<html><head><title> Page &amp; {name} </title></head></html>")
        elif self.path == "/slow":
            time.sleep(2)
            self._send(200, "late")
        elif self.path == "/flaky":
            Handler.flaky_hits += 1
            self._send(503 if Handler.flaky_hits == 1 else 200, "ok now", "text/plain")
        elif self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path.startswith("/bytes/"):
            size, _, query = self.path.split("/")[2].partition("?")
            self._send_bytes(int(size), declared=query == "declared")
        else:
            self._send(404, "<title>Not here</title>")

    def _send(self, status: int, body: str, content_type: str = "text/html") -> None:
        self.reply(status, body.encode(), content_type)

    def _send_bytes(self, size: int, declared: bool) -> None:
        """`size` bytes, with a Content-Length or streamed chunked (no size up front)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if declared:
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self.wfile.write(b"x" * size)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, size, 4096):
            chunk = b"x" * min(4096, size - start)
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve_http(Handler) as base:
        yield base


@pytest.fixture
def allowed(settings: Settings) -> Settings:
    """The test server's address allowed, as a deployment would allow an internal host."""
    return settings.model_copy(update={"bulkjobs_http_fetch_allowed_hosts": "127.0.0.1/32"})


@pytest.fixture
async def manager(allowed: Settings) -> AsyncIterator[BulkJobManager]:
    manager = BulkJobManager(allowed)
    yield manager
    await manager.aclose()


def body_files(settings: Settings) -> list[Path]:
    return sorted(Path(settings.bulk_export_path).glob("*/bodies/*"))


async def fetched_rows(manager: BulkJobManager, job_data: dict[str, object]) -> list[Any]:
    _, content = await run(manager, {"export_format": "json", **job_data})
    rows: list[Any] = json.loads(content)
    return rows


async def run(
    manager: BulkJobManager, job_data: dict[str, object]
) -> tuple[dict[str, object], bytes]:
    data = job_types.validate_job_data("http_fetch", job_data)
    job_id = await manager.create_bulk_job("http_fetch", "u1", data, http_fetch.STAGES)
    report = await manager.process_job_with_stages(job_id, job_types.get("http_fetch").processors)
    assert report is not None
    assert report.status == BulkJobStatus.COMPLETED, report.error_message
    path = await manager.get_export_file_path(report.exports[0].export_id)
    assert path is not None
    return report.model_dump(mode="json"), path.read_bytes()


async def test_fetch_mixed_urls_to_csv(manager: BulkJobManager, server: str) -> None:
    Handler.flaky_hits = 0
    urls = [f"{server}/page/{i}" for i in range(5)] + [
        f"{server}/missing",
        f"{server}/slow",
        f"{server}/flaky",
    ]
    report, content = await run(
        manager, {"urls": urls, "concurrency": 4, "timeout_s": 0.5, "retries": 1}
    )
    fetch = report["stages"][1]  # type: ignore[index]  # a report is a dict here
    assert (fetch["items_total"], fetch["items_completed"], fetch["items_failed"]) == (8, 6, 2)
    # The job's numbers are its eight URLs, not a sum over its four stages.
    assert (report["items_total"], report["items_completed"], report["items_failed"]) == (8, 6, 2)
    rows = {row["url"]: row for row in csv.DictReader(io.StringIO(content.decode()))}
    assert rows[f"{server}/page/3"]["title"] == "Page & 3"
    assert rows[f"{server}/page/3"]["status"] == "200"
    assert len(rows[f"{server}/page/3"]["sha256"]) == 64
    assert rows[f"{server}/missing"]["error"] == "HTTP 404"
    assert "Timeout" in rows[f"{server}/slow"]["error"]
    assert rows[f"{server}/flaky"]["status"] == "200"
    assert rows[f"{server}/flaky"]["attempts"] == "2"


async def test_fetch_to_json_and_zip(manager: BulkJobManager, server: str) -> None:
    urls = [f"{server}/page/a", f"{server}/missing"]
    _, content = await run(manager, {"urls": urls, "export_format": "json", "retries": 0})
    rows = json.loads(content)
    assert [row["status"] for row in rows] == [200, 404]
    _, content = await run(manager, {"urls": urls, "export_format": "zip", "retries": 0})
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        names = archive.namelist()
        assert "results.json" in names
        assert b"Page &amp; a" in archive.read("bodies/00000.bin")


@pytest.mark.parametrize(
    ("job_data", "field"),
    [
        ({"urls": []}, "job_data.urls"),
        ({"urls": ["ftp://x"]}, "job_data.urls.0"),
        ({"urls": ["http://x"], "concurrency": 0}, "job_data.concurrency"),
        ({"urls": ["http://x"], "export_format": "xml"}, "job_data.export_format"),
    ],
)
def test_bad_job_data_names_the_field(job_data: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        job_types.validate_job_data("http_fetch", job_data)
    assert caught.value.field == field


async def test_loopback_is_refused_by_default(settings: Settings, server: str) -> None:
    Handler.seen.clear()
    manager = BulkJobManager(settings)
    try:
        [row] = await fetched_rows(manager, {"urls": [f"{server}/page/1"], "retries": 2})
    finally:
        await manager.aclose()
    assert row["status"] is None and row["attempts"] == 1
    assert "127.0.0.1 is a loopback address" in row["error"]
    assert "BULKJOBS_HTTP_FETCH_ALLOWED_HOSTS" in row["error"]
    assert Handler.seen == []


async def test_a_name_resolving_to_loopback_is_refused(
    settings: Settings, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    monkeypatch.setattr(fetch_policy, "system_resolver", resolver)
    Handler.seen.clear()
    port = server.rsplit(":", 1)[1]
    manager = BulkJobManager(settings)
    try:
        [row] = await fetched_rows(manager, {"urls": [f"http://intranet.test:{port}/page/1"]})
    finally:
        await manager.aclose()
    assert "intranet.test resolves to 127.0.0.1, which is a loopback address" in row["error"]
    assert asked == ["intranet.test"] and Handler.seen == []


async def test_every_redirect_hop_is_checked(manager: BulkJobManager, server: str) -> None:
    Handler.seen.clear()
    port = server.rsplit(":", 1)[1]
    inside = f"{server}/redirect?to=/page/ok"
    outside = f"{server}/redirect?to=http://127.0.0.2:{port}/page/secret"
    scheme = f"{server}/redirect?to=file:///etc/passwd"
    rows = await fetched_rows(manager, {"urls": [inside, outside, scheme], "concurrency": 1})
    assert rows[0]["status"] == 200 and rows[0]["title"] == "Page & ok"
    assert "127.0.0.2 is a loopback address" in rows[1]["error"]
    assert "only http and https" in rows[2]["error"]
    assert "/page/secret" not in Handler.seen


@pytest.mark.parametrize("declared", [True, False])
async def test_a_body_past_the_cap_fails_its_item_and_is_not_kept(
    allowed: Settings, server: str, declared: bool
) -> None:
    capped = allowed.model_copy(update={"bulkjobs_http_fetch_max_body_bytes": 10_000})
    manager = BulkJobManager(capped)
    suffix = "?declared" if declared else ""
    urls = [f"{server}/bytes/10000{suffix}", f"{server}/bytes/10001{suffix}"]
    try:
        ok, big = await fetched_rows(manager, {"urls": urls, "concurrency": 1})
        kept = sorted(path.stat().st_size for path in body_files(capped))
    finally:
        await manager.aclose()
    assert ok["error"] is None and ok["size_bytes"] == 10_000
    assert "exceeds 10000 bytes (BULKJOBS_HTTP_FETCH_MAX_BODY_BYTES)" in big["error"]
    assert big["size_bytes"] == 0 and big["sha256"] is None
    assert kept == [10_000]


async def test_the_job_byte_budget_fails_the_items_past_it(allowed: Settings, server: str) -> None:
    budget = allowed.model_copy(update={"bulkjobs_http_fetch_max_job_bytes": 25_000})
    manager = BulkJobManager(budget)
    try:
        rows = await fetched_rows(
            manager, {"urls": [f"{server}/bytes/10000"] * 4, "concurrency": 1}
        )
    finally:
        await manager.aclose()
    assert [row["error"] is None for row in rows] == [True, True, False, False]
    assert all("BULKJOBS_HTTP_FETCH_MAX_JOB_BYTES" in row["error"] for row in rows[2:])
