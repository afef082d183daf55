"""The dashboard's labels, links and narrow layout in headless Chromium: stage bars carry
visible labels, a container_batch job links to its container jobs, and at 420 px nothing
scrolls sideways and the tabs stay on one line (screenshots in test-artifacts/)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import SCREENSHOTS
from tests.browser.server import Server
from tests.browser.test_dashboard import job_row, sign_in, start_sample

pytestmark = pytest.mark.timeout(900)
NARROW = 420


@pytest.fixture
def narrow(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": NARROW, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
        assert not errors, f"JavaScript errors in the page: {errors}"
    finally:
        context.close()


def assert_fits(page: Page, name: str) -> None:
    """No sideways scrolling, and the tabs on one line that needs no scrolling either."""
    page.screenshot(path=str(SCREENSHOTS / f"narrow-{name}.png"), full_page=True)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= NARROW, f"{name}: the page is {width} px wide at {NARROW} px"
    tops = page.locator("#tabs a:visible").evaluate_all(
        "links => links.map(link => Math.round(link.getBoundingClientRect().top))"
    )
    assert len(set(tops)) == 1, f"{name}: the tabs wrap onto {len(set(tops))} lines"
    nav = page.locator("#tabs").evaluate("nav => [nav.scrollWidth, nav.clientWidth]")
    assert nav[0] <= nav[1], f"{name}: the tabs overflow their line"


def test_at_420_px_nothing_scrolls_sideways(narrow: Page, server: Server) -> None:
    sign_in(narrow, server, server.admin_token)
    row = job_row(narrow, start_sample(narrow, items=30, delay_ms=10, fail_every=7))
    expect(row.locator(".badge")).to_have_text("completed", timeout=20_000)
    assert_fits(narrow, "jobs")
    row.get_by_role("link").click()
    expect(narrow.locator(".job-head .badge")).to_have_text("completed")
    expect(narrow.get_by_role("button", name="Download")).to_be_visible()
    assert_fits(narrow, "job")
    for tab in ("Container jobs", "Webhooks", "Hosts", "Templates"):
        narrow.get_by_role("link", name=tab).click()
        expect(narrow.locator("#view-error")).to_be_hidden()
        assert_fits(narrow, tab.lower().replace(" ", "-"))


def test_stage_bars_carry_visible_labels(page: Page, server: Server) -> None:
    sign_in(page, server, server.admin_token)
    row = job_row(page, start_sample(page, items=20, delay_ms=5))
    expect(row.locator(".badge")).to_have_text("completed", timeout=20_000)
    labels = row.locator(".stage-mini .stage-label")
    expect(labels).to_have_text(["init 100%", "fetch 100%", "process 100%", "export 100%"])
    for index in range(4):
        expect(labels.nth(index)).to_be_visible()
    fetch = row.locator(".stage-mini[data-stage=content_fetch]")
    assert "20 / 0 / 20" in (fetch.get_attribute("title") or "")


def test_a_container_batch_job_links_to_its_container_jobs(page: Page, server: Server) -> None:
    batch = {
        "job_type": "container_batch",
        "job_data": {
            "image": "local",
            "executor_type": "local",
            "command": "echo {item}",
            "items": ["a", "b", "c"],
        },
    }
    with server.api(server.admin_token) as api:
        other = api.post("/container-jobs", json={"image": "local", "command": "true"})
        assert other.status_code == 201, other.text
        created = api.post("/bulk-jobs", json=batch)
        assert created.status_code == 202, created.text
    job_id = created.json()["job_id"]
    sign_in(page, server, server.admin_token)
    page.goto(f"{server.base}/#/jobs/{job_id}")
    expect(page.locator(".job-head .badge")).to_have_text("completed", timeout=30_000)
    page.get_by_role("link", name="Container jobs of this job →").click()
    rows = page.locator("#view-containers tbody tr")
    expect(rows).to_have_count(3)
    ids = rows.evaluate_all("rows => rows.map(row => row.dataset.containerJob)")
    assert sorted(ids) == [f"{job_id}-{index:05d}" for index in range(3)]
    expect(page.locator("#view-containers")).to_contain_text("Container jobs of bulk job")
    page.get_by_role("link", name="all container jobs").click()
    expect(page.locator(f"tr[data-container-job='{other.json()['id']}']")).to_be_visible()
