"""The status page in a real headless Chromium (Debian's), against a real server and job store."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from lorainbox.pipeline.jobs import JobStore, State
from lorainbox.ui.status_server import StatusServer
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.test_status_server import READINGS, make_jobs

# Debian's Chromium on Linux (`make test` installs it); elsewhere Playwright's own browser.
CHROMIUM = os.environ.get("LORAINBOX_CHROMIUM") or shutil.which("chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REFUSED = "Refused: this needs the token — open the page with `lorainbox status --web`"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sys.platform.startswith("linux"):
        assert CHROMIUM, "install Debian's Chromium: apt-get install -y chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Site:
    def __init__(self, tmp_path: Path):
        self.store = JobStore(tmp_path / "state" / "jobs.sqlite")
        self.ids = make_jobs(self.store, tmp_path / "inbox")
        self.server = StatusServer(
            self.store,
            str(tmp_path / "inbox"),
            tmp_path / "state",
            0,
            readings=lambda: READINGS,
            wake=lambda: None,
        )
        self.url = self.server.start()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    yield s
    s.server.stop()
    s.store.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    p = context.new_page()
    p.set_default_timeout(15_000)
    yield p
    context.close()


def test_page_shows_the_queue_progress_and_loss_chart(site: Site, page: Page) -> None:
    page.goto(site.url)
    row = page.locator("#queue tbody tr", has_text="pirate-bot")
    expect(row).to_contain_text("120/200")
    expect(row).to_contain_text("1.800")
    expect(row).to_contain_text("850")
    expect(row).to_contain_text("1m35s")
    expect(page.locator("#queue tbody tr", has_text="waiter")).to_contain_text(
        "waiting: on battery (42%)"
    )
    expect(page.locator("#detail-title")).to_have_text("pirate-bot")
    train = page.locator("#chart path.train")
    expect(train).to_have_attribute("d", re.compile(r"^M[\d.]+,[\d.]+( L[\d.]+,[\d.]+){11}$"))
    expect(page.locator("#chart path.valid")).to_have_count(1)
    expect(page.locator("#chart circle.valid")).to_have_count(2)
    expect(page.get_by_role("button", name="Cancel")).to_be_enabled()
    expect(page.get_by_role("button", name="Resume")).to_be_disabled()


def test_an_exporting_job_says_how_far_its_gguf_is(site: Site, page: Page) -> None:
    job = site.ids["pirate-bot"]
    site.store.transition(job, State.EXPORTING)
    progress = {**site.store.get(job).progress, "export": {"stage": "writing", "fraction": 0.45}}
    site.store.update(job, progress=progress)
    page.goto(site.url)
    row = page.locator("#queue tbody tr", has_text="pirate-bot")
    expect(row).to_contain_text("exporting: writing the GGUF 45%")


def test_selecting_a_job_shows_its_actions(site: Site, page: Page) -> None:
    page.goto(site.url)
    page.locator("#queue tbody tr", has_text="broken").click()
    expect(page.locator("#detail-title")).to_have_text("broken")
    expect(page.get_by_role("button", name="Retry")).to_be_enabled()
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    expect(page.locator("#chart text.empty")).to_have_text("no loss reported yet")


def test_cancel_with_the_token_reaches_the_store(site: Site, page: Page) -> None:
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    page.goto(site.url + f"#token={site.server.token}")
    expect(page.locator("#detail-title")).to_have_text("pirate-bot")
    assert page.evaluate("location.hash") == ""
    assert page.evaluate("sessionStorage.getItem('lorainbox-token')") == site.server.token
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#message")).to_have_text("Asked the daemon to cancel pirate-bot.")
    assert site.store.take_requests() == [(site.ids["pirate-bot"], "cancel")]
    assert urls and not any(site.server.token in u for u in urls)


def test_without_the_token_the_buttons_are_refused(site: Site, page: Page) -> None:
    page.goto(site.url)
    expect(page.locator("#detail-title")).to_have_text("pirate-bot")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#message")).to_have_text(REFUSED)
    assert site.store.take_requests() == []


def test_a_wrong_token_is_refused_by_the_server(site: Site, page: Page) -> None:
    page.goto(site.url + "#token=stale")
    expect(page.locator("#detail-title")).to_have_text("pirate-bot")
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#message")).to_contain_text("Refused: wrong token")
    assert site.store.take_requests() == []
