"""The API docs (/docs, /redoc) in headless Chromium with every request but the test
server's refused: Swagger UI and ReDoc come from the fastapi-offline package, the page's
Content-Security-Policy holds, and the icon is served (and cached) instead of a 404."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, expect

from tests.browser.conftest import SCREENSHOTS
from tests.browser.server import Server

pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def offline(browser: Browser, server: Server) -> Iterator[tuple[Page, list[str], list[str]]]:
    """A page that may reach the test server only; refused URLs and console errors are
    collected (a CSP violation is a console error)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    refused: list[str] = []
    problems: list[str] = []

    def only_the_server(route: Route) -> None:
        if route.request.url.startswith(server.base):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_server)
    page = context.new_page()

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        yield page, refused, problems
    finally:
        context.close()


def test_swagger_ui_works_offline(
    server: Server, offline: tuple[Page, list[str], list[str]]
) -> None:
    page, refused, problems = offline
    page.goto(f"{server.base}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("bulkjobs", timeout=30_000)
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    expect(
        page.locator(
            ".opblock-summary-path", has_text="/bulk-jobs/{job_id}/export/{export_id}"
        ).first
    ).to_be_visible()
    page.screenshot(path=str(SCREENSHOTS / "docs-offline.png"))
    assert refused == []
    assert problems == []


def test_redoc_works_offline(server: Server, offline: tuple[Page, list[str], list[str]]) -> None:
    page, refused, problems = offline
    page.goto(f"{server.base}/redoc")
    # ReDoc parses its 1 MB bundle and the document first: slow on two busy cores.
    expect(page.locator(".api-info h1")).to_contain_text("bulkjobs", timeout=30_000)
    expect(page.get_by_text("/bulk-jobs/{job_id}/cancel").first).to_be_attached()
    page.screenshot(path=str(SCREENSHOTS / "redoc-offline.png"))
    assert refused == []
    # ReDoc's "API docs by Redocly" badge is an image on their CDN: the page's policy refuses
    # it, as it should; nothing else may be refused or fail.
    badge = "Loading the image 'https://cdn.redoc.ly/redoc/logo-mini.svg' violates"
    assert [problem for problem in problems if not problem.startswith(badge)] == []


def test_the_icon_is_an_svg_kept_for_a_day(server: Server) -> None:
    response = httpx.get(f"{server.base}/favicon.ico")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/svg+xml"
    assert response.headers["cache-control"] == "public, max-age=86400"
    assert response.text.startswith("<svg")


def test_the_icon_is_fetched_once_not_on_every_page(page: Page, server: Server) -> None:
    log = Path(server.env["BULKJOBS_DB_PATH"]).parent / "server.log"
    before = log.read_text().count("GET /favicon.ico")
    for _ in range(3):
        page.goto(f"{server.base}/")
        expect(page.locator("#sign-in")).to_be_visible()
    page.goto(f"{server.base}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("bulkjobs", timeout=30_000)
    lines = [line for line in log.read_text().splitlines() if "GET /favicon.ico" in line]
    assert len(lines) - before <= 1, lines
    assert all(" 404" not in line for line in lines)
