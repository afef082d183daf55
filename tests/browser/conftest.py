"""Headless Chromium (Debian's package, driven by Playwright) against the real server.

The server is `bulkjobs serve` in a subprocess on a free port with a fresh SQLite file and its
embedded worker, exactly as `make run` starts it; the tests sign in with the URL it prints.
Chromium comes from apt: it is installed when missing, and the tests skip with the reason if
that fails, unless BROWSER_TESTS_REQUIRED is set (then they fail).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.browser.server import Server, serve

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
#: Jobs one user may start per window on the test server; the 429 test reaches it.
RATE_LIMIT = 3


def _install_chromium() -> str | None:
    """Install Debian's chromium; the reason it failed, or None."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    for command in (install, ["apt-get", "update", "-q"], install):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if command is install and result.returncode == 0:
            return None
    return f"apt-get install chromium failed: {result.stderr.strip()[-500:]}"


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        problem = _install_chromium()
        if problem is not None or not CHROMIUM.exists():
            message = f"no Chromium at {CHROMIUM} ({problem}); install Debian's chromium package"
            if os.environ.get("BROWSER_TESTS_REQUIRED"):
                pytest.fail(message)
            pytest.skip(reason=message)
    return CHROMIUM


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(
        tmp_path_factory.mktemp("server"), BULK_RATE_LIMIT_MAX_JOBS=str(RATE_LIMIT)
    ) as started:
        yield started


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[Browser]:
    """Module-scoped: Playwright's sync API keeps an event loop running in this thread while
    it is open, and the asyncio tests of later modules need the thread's loop to be free."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=["--no-sandbox"]
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context per test; its last screen is kept as a test artifact."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1360, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
        assert not errors, f"JavaScript errors in the page: {errors}"
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        opened.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
        context.close()
