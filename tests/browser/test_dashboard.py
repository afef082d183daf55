"""The dashboard in headless Chromium: sign in, start, watch live, cancel, download, 429."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import Locator, Page, expect

from src.services.domain import BulkJobStatus, NewJob, RateLimit
from src.services.store.local import LocalStore
from tests.browser.conftest import RATE_LIMIT, SCREENSHOTS
from tests.browser.server import Server

T = TypeVar("T")

# The first test of a fresh machine may spend minutes installing Chromium with apt.
pytestmark = pytest.mark.timeout(900)


def sign_in(page: Page, server: Server, token: str) -> None:
    page.goto(f"{server.base}/?token={token}")
    expect(page.locator("#live")).to_have_text("live")


def start_sample(page: Page, items: int, delay_ms: int, fail_every: int = 0) -> str:
    """Start a sample job from the form; returns the short id the notice shows."""
    form = page.locator("#sample-form")
    form.locator("[name=items]").fill(str(items))
    form.locator("[name=delay_ms]").fill(str(delay_ms))
    form.locator("[name=fail_every]").fill(str(fail_every))
    form.get_by_role("button", name="Start").click()
    notice = page.locator("#sample-notice")
    expect(notice).to_contain_text("Started job")
    return (notice.text_content() or "").removeprefix("Started job ").rstrip(".").strip()


def job_row(page: Page, short_id: str) -> Locator:
    """The list row of one job (the first row may still be an earlier test's job)."""
    return page.locator("table.jobs tbody tr", has=page.locator(f'a[href^="#/jobs/{short_id}"]'))


def stage(page: Page, name: str) -> str | None:
    return page.locator(f".timeline li[data-stage={name}]").get_attribute("data-status")


def test_printed_url_signs_in_then_a_job_runs_live_and_its_export_downloads(
    page: Page, server: Server, tmp_path: Path
) -> None:
    page.goto(server.login_url)
    expect(page.locator("#live")).to_have_text("live")
    assert "token" not in page.url
    assert page.evaluate("sessionStorage.getItem('bulkjobs.token')") == server.admin_token
    expect(page.get_by_role("link", name="Hosts")).to_be_visible()
    page.evaluate("window.notReloaded = true")

    row = job_row(page, start_sample(page, items=80, delay_ms=25, fail_every=8))
    expect(row.locator(".badge")).to_have_text("processing")
    row.get_by_role("link").click()

    # Each stage is seen moving and then done, with no reload: the stream updates the page.
    expect(page.locator(".timeline li[data-stage=content_fetch]")).to_have_attribute(
        "data-status", "processing"
    )
    fetch_counts = page.locator(".timeline li[data-stage=content_fetch] .stage-progress .num")
    expect(fetch_counts).not_to_contain_text("0 / 0 / 80")
    page.screenshot(path=str(SCREENSHOTS / "job-running.png"))
    expect(page.locator(".job-head .badge")).to_have_text("completed", timeout=20_000)
    assert [stage(page, name) for name in ("initialization", "content_processing")] == [
        "completed",
        "completed",
    ]
    expect(fetch_counts).to_contain_text("70 / 10 / 80")
    assert page.evaluate("window.notReloaded") is True
    expect(page.get_by_role("button", name="Cancel job")).to_be_hidden()

    with page.expect_download() as download:
        page.get_by_role("button", name="Download").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    rows = json.loads(saved.read_text())
    assert len(rows) == 80 and sum(r["status"] == "failed" for r in rows) == 10
    expect(page.locator(".exports")).to_contain_text(re.compile(r"\(in 2[34] h \d+ min\)"))

    page.get_by_role("link", name="← All jobs").click()
    expect(row.locator(".badge")).to_have_text("completed")


def test_a_running_job_is_cancelled_from_its_page(page: Page, server: Server) -> None:
    sign_in(page, server, server.token("carol"))
    expect(page.get_by_role("link", name="Hosts")).to_be_hidden()
    job_row(page, start_sample(page, items=5000, delay_ms=20)).get_by_role("link").click()
    expect(page.locator(".timeline li[data-stage=content_fetch]")).to_have_attribute(
        "data-status", "processing"
    )
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator(".job-head .badge")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel job")).to_be_hidden()
    expect(page.locator("[data-role=job-error]")).to_contain_text("cancelled from the dashboard")


def test_a_finished_job_retries_its_failed_items_from_its_page(page: Page, server: Server) -> None:
    sign_in(page, server, server.token("retrier"))
    start_sample(page, items=12, delay_ms=0, fail_every=4)
    page.locator("table.jobs tbody tr").first.get_by_role("link").click()
    expect(page.locator(".job-head .badge")).to_have_text("completed")
    first = page.url.rsplit("/", 1)[1]
    expect(page.locator("[data-role=retry-of]")).to_be_hidden()
    page.get_by_role("button", name="Retry failed items").click()
    expect(page).not_to_have_url(re.compile(f"{first}$"))
    retry_of = page.locator("#view-job [data-role=retry-of]")
    expect(retry_of).to_contain_text(f"Retries the failed items of job {first[:8]}")
    expect(page.locator(".job-head .badge")).to_have_text("completed")
    expect(page.locator(".timeline li[data-stage=content_fetch]")).to_contain_text("0 / 3 / 3")
    # Every item of the retry failed again (by its number): it may be retried in turn.
    expect(page.get_by_role("button", name="Retry failed items")).to_be_visible()
    retry_of.get_by_role("link").click()
    expect(page).to_have_url(re.compile(f"{first}$"))
    page.get_by_role("link", name="← All jobs").click()
    expect(page.locator("table.jobs tbody tr").first).to_contain_text("retry of")


def test_a_429_is_explained_with_its_retry_after(page: Page, server: Server) -> None:
    sign_in(page, server, server.token("dave"))
    for _ in range(RATE_LIMIT):
        start_sample(page, items=1, delay_ms=0)
    page.locator("#sample-form").get_by_role("button", name="Start").click()
    notice = page.locator("#sample-notice[data-role=rate-limit]")
    expect(notice).to_contain_text("Rate limit reached")
    expect(notice).to_contain_text("You can start another in 59 min")
    expect(notice).to_contain_text("Retry-After: 3")
    expect(page.locator("table.jobs tbody tr")).to_have_count(RATE_LIMIT)


def test_a_bad_token_is_refused_and_the_form_signs_in(page: Page, server: Server) -> None:
    page.goto(f"{server.base}/?token=bjt_not-a-token")
    expect(page.locator("#sign-in-error")).to_contain_text("not accepted")
    assert "token" not in page.url
    page.locator("#token").fill(server.token("erin"))
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator("[data-role=empty]")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#sign-in")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('bulkjobs.token')") is None


def test_container_jobs_with_logs_and_admin_hosts(page: Page, server: Server) -> None:
    with server.api(server.admin_token) as api:
        created = api.post(
            "/container-jobs",
            json={"image": "local", "command": "echo hello from a container", "name": "greet"},
        )
        assert created.status_code == 201, created.text
    sign_in(page, server, server.admin_token)
    page.get_by_role("link", name="Container jobs").click()
    row = page.locator(f"tr[data-container-job='{created.json()['id']}']")
    expect(row.locator(".badge")).to_have_text("completed", timeout=15_000)
    expect(row.locator("td").nth(4)).to_have_text("0")
    row.get_by_role("button", name="Logs").click()
    expect(page.locator(".logs")).to_contain_text("hello from a container")

    page.get_by_role("link", name="Hosts").click()
    local = page.locator("tr[data-host=local]")
    expect(local).to_contain_text("free")
    expect(local.locator(".badge")).to_have_text("healthy")
    page.get_by_role("link", name="Templates").click()
    expect(page.locator("#view-templates")).to_contain_text("No environment templates")


def in_thread(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` on its own loop: Playwright's sync API owns this thread's loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


def seed(server: Server, user: str, count: int) -> list[str]:
    """Jobs written straight into the server's SQLite file, as another process would."""

    async def write() -> list[str]:
        async with LocalStore(server.env["BULKJOBS_DB_PATH"]) as store:
            unlimited = RateLimit(max_jobs=10**9, window_s=1)
            stages = ["initialization", "content_fetch", "export_generation"]
            new = NewJob(job_type="by_hand", user_id=user, job_data={}, stages=stages)
            return [await store.create(new, unlimited) for _ in range(count)]

    return in_thread(write())


def drive(server: Server, job_id: str, completed: int) -> None:
    async def write() -> None:
        async with LocalStore(server.env["BULKJOBS_DB_PATH"]) as store:
            job = await store.get_job(job_id)
            assert job is not None
            if job.status == BulkJobStatus.PENDING:  # starting the stage moves the job
                await store.start_stage(job_id, "content_fetch", 100)
            await store.update_stage_progress(job_id, "content_fetch", completed / 100, completed)

    in_thread(write())


def test_a_thousand_jobs_list_updates_rows_in_place(page: Page, server: Server) -> None:
    ids = seed(server, "frank", 1000)
    sign_in(page, server, server.token("frank"))
    rows = page.locator("table.jobs tbody tr")
    expect(rows).to_have_count(200)
    expect(page.locator("[data-role=summary]")).to_contain_text("200 jobs (your newest 200")
    newest, other = ids[-1], ids[-2]
    marked = "el => { el.marked = true; return el.marked; }"
    assert page.locator(f"tr[data-job-id='{newest}']").evaluate(marked)
    assert page.locator(f"tr[data-job-id='{other}']").evaluate(marked)

    drive(server, newest, 40)
    row = page.locator(f"tr[data-job-id='{newest}']")
    expect(row.locator(".badge")).to_have_text("processing")
    expect(row.locator("td").nth(3)).to_have_text("40 / 0 / 100")
    drive(server, newest, 90)
    expect(row.locator("td").nth(3)).to_have_text("90 / 0 / 100")
    # The same elements, updated in place: no re-render of the list per event.
    assert row.evaluate("el => el.marked") is True
    assert page.locator(f"tr[data-job-id='{other}']").evaluate("el => el.marked") is True
    expect(rows).to_have_count(200)
    page.locator("[data-role=filter]").select_option("completed")
    expect(page.locator("table.jobs tbody tr:visible")).to_have_count(0)
    page.locator("[data-role=filter]").select_option("all")
    expect(page.locator("table.jobs tbody tr:visible")).to_have_count(200)
