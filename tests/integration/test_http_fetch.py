"""The built-in http_fetch job type against a real local HTTP server."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from src.config import Settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.domain import BulkJobStatus
from src.services.errors import InvalidInput
from src.services.job_types import http_fetch, job_types


class Handler(BaseHTTPRequestHandler):
    flaky_hits = 0

    def do_GET(self) -> None:
        if self.path.startswith("/page/"):
            name = self.path.rsplit("/", 1)[1]
            self._send(200, f"<html><head><title> Page &amp; {name} </title></head></html>")
        elif self.path == "/slow":
            time.sleep(2)
            self._send(200, "late")
        elif self.path == "/flaky":
            Handler.flaky_hits += 1
            self._send(503 if Handler.flaky_hits == 1 else 200, "ok now", "text/plain")
        else:
            self._send(404, "<title>Not here</title>")

    def _send(self, status: int, body: str, content_type: str = "text/html") -> None:
        payload = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
async def manager(settings: Settings) -> AsyncIterator[BulkJobManager]:
    manager = BulkJobManager(settings)
    yield manager
    await manager.aclose()


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
    fetch = report["stages"][1]  # type: ignore[index]
    assert (fetch["items_total"], fetch["items_completed"], fetch["items_failed"]) == (8, 6, 2)
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
