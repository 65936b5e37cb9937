"""Headless Chromium on the demo: serving it with its own command, opening a page's Connections panel.

Used by ``tests/test_browser.py`` (the panel's layout and colours) and ``tests/test_demo_pages.py``
(what each demo page says against what its panel shows).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page, expect, sync_playwright

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


@contextmanager
def serving_demo(tmp_path: Path, *runserver_args: str, **env: str) -> Iterator[str]:
    """Serve the demo with ``bash demo/run.sh`` on SQLite and a free loopback port; yield its URL.

    Without ``--noreload`` runserver's autoreloader runs the server in a child process: the whole
    process group is stopped at the end.
    """
    port = free_port()
    environment = demo_env(
        DEMO_PORT=str(port),
        DEMO_SQLITE_PATH=str(tmp_path / "demo.sqlite3"),
        DEMO_LOG_LEVEL="warning",
        **env,
    )
    log_path = tmp_path / "demo.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            ["bash", str(DEMO / "run.sh"), *runserver_args],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_listening(port, server, timeout=60, name="the demo", output=log_path.read_text)
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)  # run.sh exec'd runserver: its group is the demo's
        except ProcessLookupError:
            pass  # it has exited already (wait_listening said why)
        server.wait(10)


@contextmanager
def chromium() -> Iterator[Browser]:
    """Launch Debian's Chromium, headless, through Playwright."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_panel(page: Page, url: str) -> None:
    """Load ``url`` and open its Connections panel (its content is fetched when the button is clicked)."""
    page.goto(url)
    page.locator("#djDebugPanelList a.ConnectionsPanel").click()
    expect(page.locator("#ConnectionsPanel .conntrace-panel")).to_be_visible()


def screenshot(page: Page, name: str) -> Path:
    """Save a screenshot of ``page`` as ``test-artifacts/<name>.png``; return its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path
