"""The dashboard when its token stops working: a revoked or expired token takes the user
back to the sign-in form with the server's reason, and a finished job can be deleted."""

from __future__ import annotations

from datetime import timedelta

import pytest
from playwright.sync_api import Page, expect

from src.services.auth import hash_token, token_id
from src.services.domain import utcnow
from src.services.store.local import LocalStore
from tests.browser.server import Server
from tests.browser.test_dashboard import in_thread, sign_in, start_sample

# The first test of a fresh machine may spend minutes installing Chromium with apt.
pytestmark = pytest.mark.timeout(900)


def stored_token(page: Page) -> str | None:
    token: str | None = page.evaluate("sessionStorage.getItem('bulkjobs.token')")
    return token


def test_a_token_revoked_while_signed_in_returns_to_the_sign_in_form(
    page: Page, server: Server
) -> None:
    raw = server.token("frank")
    sign_in(page, server, raw)
    with server.api(server.admin_token) as api:
        assert api.delete(f"/admin/tokens/{token_id(raw)}").status_code == 204

    # The next request the page makes finds out (here: starting a job).
    page.locator("#sample-form").get_by_role("button", name="Start").click()

    expect(page.locator("#sign-in")).to_be_visible()
    expect(page.locator("#sign-in-error")).to_contain_text("Signed out: this token was revoked")
    expect(page.locator("#tabs")).to_be_hidden()
    assert stored_token(page) is None
    # Coming back with it again is refused at the form, saying why.
    page.goto(f"{server.base}/?token={raw}")
    expect(page.locator("#sign-in-error")).to_contain_text("not accepted: this token was revoked")


def expired_token(server: Server, user: str) -> str:
    """A token whose expiry has passed, written straight into the server's SQLite file."""
    raw = f"bjt_expired-{user}-" + "x" * 30

    async def write() -> None:
        async with LocalStore(server.env["BULKJOBS_DB_PATH"]) as store:
            past = utcnow() - timedelta(minutes=5)
            await store.create_token(hash_token(raw), user, False, "old", expires_at=past)

    in_thread(write())
    return raw


def test_a_page_opened_with_an_expired_token_shows_the_sign_in_form(
    page: Page, server: Server
) -> None:
    raw = expired_token(server, "gina")
    # As a tab that signed in earlier and is reloaded after its token expired.
    page.goto(f"{server.base}/")
    page.evaluate("token => sessionStorage.setItem('bulkjobs.token', token)", raw)
    page.reload()
    expect(page.locator("#sign-in")).to_be_visible()
    expect(page.locator("#sign-in-error")).to_contain_text("Signed out: this token expired at")
    expect(page.locator("#tabs")).to_be_hidden()
    assert stored_token(page) is None


def test_a_finished_job_is_deleted_from_its_page(page: Page, server: Server) -> None:
    sign_in(page, server, server.token("hana"))
    start_sample(page, items=3, delay_ms=1)
    row = page.locator("table.jobs tbody tr").first
    job_id = row.get_attribute("data-job-id")
    row.get_by_role("link").click()
    expect(page.locator(".job-head .badge")).to_have_text("completed", timeout=20_000)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete job").click()
    expect(page).to_have_url(f"{server.base}/#/jobs")
    expect(page.locator(f"tr[data-job-id='{job_id}']")).to_have_count(0)
    with server.api(server.admin_token) as api:
        assert api.get(f"/bulk-jobs/{job_id}").status_code == 404
