"""The dashboard's Webhooks view in headless Chromium: register an endpoint (its secret shown
once), see a job's delivery and why it failed (here: the fetch policy refuses loopback), and
see a disabled endpoint's reason."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.server import Server
from tests.browser.test_dashboard import sign_in

pytestmark = pytest.mark.timeout(900)


def test_register_an_endpoint_and_see_its_failing_delivery(page: Page, server: Server) -> None:
    token = server.token("hooked")
    sign_in(page, server, token)
    page.get_by_role("link", name="Webhooks").click()
    view = page.locator("#view-webhooks")
    expect(view).to_contain_text("No webhook endpoints yet")
    view.locator("[name=url]").fill("http://127.0.0.1:9/hook")
    view.get_by_label("job.created").check()
    view.get_by_role("button", name="Register endpoint").click()
    expect(view.locator(".notice.ok")).to_contain_text(re.compile(r"whsec_[A-Za-z0-9+/=]+"))
    row = view.locator("tr[data-webhook]")
    expect(row).to_contain_text("http://127.0.0.1:9/hook")
    expect(row).to_contain_text("job.created")
    with server.api(token) as api:
        started = api.post("/bulk-jobs", json={"job_type": "sample", "job_data": {"items": 2}})
        assert started.status_code == 202, started.text
    row.get_by_role("button", name="Deliveries").click()
    # job.completed is ticked by default, so the job may add a second delivery: pick ours.
    delivery = view.locator(".deliveries tr[data-delivery]", has_text="job.created")
    expect(delivery).to_be_visible(timeout=15_000)
    # The embedded worker tried it: the fetch policy refuses loopback by default.
    expect(delivery).to_contain_text("loopback address", timeout=15_000)
    expect(row).to_contain_text("failing since", timeout=15_000)
    view.locator("[name=url]").fill("ftp://example.com/x")
    view.get_by_role("button", name="Register endpoint").click()
    expect(view.locator(".notice.error")).to_contain_text("url")
