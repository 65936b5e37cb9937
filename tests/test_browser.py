"""The Connections panel as a person sees it: the demo served by ``demo/run.sh``, in headless Chromium."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.support import DEMO, REPO, demo_env, free_port, wait_listening

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]


def line_of(path: Path, text: str, after: str) -> int:
    """Return the number of the first line holding ``text`` after the line holding ``after``."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if after in line)
    return next(i for i, line in enumerate(lines) if i > start and text in line) + 1


@pytest.fixture
def demo_url(tmp_path: Path) -> Iterator[str]:
    """Serve the demo with its own command (``demo/run.sh``), on SQLite, on a free loopback port."""
    port = free_port()
    env = demo_env(
        DEMO_PORT=str(port), DEMO_SQLITE_PATH=str(tmp_path / "demo.sqlite3"), DEMO_LOG_LEVEL="warning"
    )
    log_path = tmp_path / "demo.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            ["bash", str(DEMO / "run.sh"), "--noreload"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_listening(port, server, name="the demo", output=log_path.read_text)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()  # run.sh exec'd runserver: this is the server itself
        server.wait(10)


@pytest.mark.slow
def test_double_close_page_shows_the_row_the_badge_and_the_opening_line(demo_url):
    opening_line = line_of(DEMO / "shop" / "views.py", "Setting.objects", after="def double_close(")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{demo_url}/double-close/")
            button = page.locator("#djDebugPanelList a.ConnectionsPanel")
            # Rendered before the request ended: the driver connection was already closed, one warning.
            expect(button).to_contain_text("1 opened · 0 reused · 1 warning")
            button.click()
            row = page.locator("#ConnectionsPanel tr.conntrace-connection")
            expect(row).to_have_count(1)
            expect(row).to_be_visible()
            expect(row.locator("td").nth(1)).to_have_text("default")
            badge = row.locator(".conntrace-badge.conntrace-double-close")
            expect(badge).to_be_visible()
            expect(badge).to_have_text("double close")
            opened_in = row.locator(".conntrace-opened-in > code")
            expect(opened_in).to_be_visible()
            expect(opened_in).to_have_text(f"shop/views.py:{opening_line} in double_close")
            # The close that ended the request, after the toolbar rendered, is there too.
            expect(row).to_contain_text("already_closed")
            expect(row).to_contain_text("at request end")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "panel-double-close.png"))
        finally:
            browser.close()
    assert (ARTIFACTS / "panel-double-close.png").stat().st_size > 10_000
