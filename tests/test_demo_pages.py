"""Each demo page says what the Connections panel shows for it; Chromium checks the panel agrees.

A page's claim (``demo/shop/claims.py``) is rendered as a sentence and as ``data-`` attributes:
where the panel lists the connection, whether it is still open, every close attempt's outcome,
whether Django made the last close, its badge and thread. The demo runs with the README's command,
``bash demo/run.sh`` (runserver with its autoreloader), and once with ``--noreload``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.browser import chromium, open_panel, screenshot, serving_demo

pytestmark = pytest.mark.slow

# In this order: /persistent/ twice (opened, then reused).
PAGES = ["normal", "persistent", "persistent", "double-close", "close-fails", "import-time", "thread-leak"]


@pytest.fixture(scope="module")
def readme_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo exactly as the README starts it: ``bash demo/run.sh``, the import-time query on by default."""
    with serving_demo(tmp_path_factory.mktemp("demo")) as url:
        yield url


def claims_of(page: Page) -> list[dict[str, str]]:
    """Return the page's claims, as its ``li.claim`` elements' data attributes."""
    return page.locator("li.claim").evaluate_all("items => items.map(item => ({...item.dataset}))")


def check_claim(panel: Locator, claim: dict[str, Any]) -> None:
    """Assert that the panel shows the connection as the page's claim says."""
    conn = f'[data-conn-id="{claim["connId"]}"]'
    used = panel.locator(f"tr.conntrace-connection{conn}")
    other = panel.locator(f"tr.conntrace-other{conn}")
    if claim["listed"] == "nowhere":
        expect(used).to_have_count(0)
        expect(other).to_have_count(0)
        return
    row, absent = (used, other) if claim["listed"] == "used" else (other, used)
    expect(row).to_have_count(1)
    expect(absent).to_have_count(0)
    expect(row.locator("td").first).to_contain_text(f"#{claim['connId']}")
    if claim["badge"]:
        expect(row.locator(f".conntrace-badge.conntrace-{claim['badge']}")).to_have_count(1)
    if claim["thread"]:
        expect(row.locator("td").nth(1)).to_contain_text(claim["thread"])
    if claim["listed"] == "other":
        return
    expect(row).to_have_attribute("data-origin", claim["origin"])
    expect(row).to_have_attribute("data-state", "open" if claim["openAtEnd"] == "yes" else "ended")
    outcomes = claim["outcomes"].split()
    expect(row).to_have_attribute("data-close-count", str(len(outcomes)))
    closes = row.locator(".conntrace-close")
    assert closes.evaluate_all("cs => cs.map(c => c.dataset.outcome)") == outcomes
    if claim["closedByDjango"] == "yes":
        expect(closes.last.locator(".conntrace-closed-by")).to_contain_text("Django's close_old_connections")
    elif outcomes:
        expect(closes.last.locator(".conntrace-closed-by")).to_have_count(0)
    if not outcomes:
        expect(row.locator(".conntrace-open")).to_contain_text("open: kept for reuse (CONN_MAX_AGE)")


def test_every_page_says_what_its_panel_shows_with_the_readme_command(readme_demo):
    seen: dict[str, list[dict[str, str]]] = {}
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        for number, slug in enumerate(PAGES):
            open_panel(page, f"{readme_demo}/{slug}/")
            claims = claims_of(page)
            assert claims, f"/{slug}/ makes no claim"
            expect(page.locator("li.claim").first).to_be_visible()
            panel = page.locator("#ConnectionsPanel")
            for claim in claims:
                check_claim(panel, claim)
            screenshot(page, f"demo-{slug}-{number}-1280")
            seen.setdefault(slug, []).extend(claims)
    # The stories the pages tell, as the panel showed them:
    assert [c["origin"] for c in seen["persistent"]] == ["request", "earlier"]
    assert seen["double-close"][0]["outcomes"].split()[-1] == "already_closed"
    assert seen["close-fails"][0]["outcomes"] == "failed"
    [import_time] = seen["import-time"]
    # The README's command shows the import-time connection: open, held by the autoreloader's main thread.
    assert (import_time["listed"], import_time["thread"], import_time["badge"]) == (
        "other",
        "MainThread",
        "before-first-request",
    )
    assert seen["thread-leak"][0]["thread"] == "demo-worker-1"


def test_import_time_page_without_the_autoreloader_says_the_panel_does_not_list_it(tmp_path):
    """``--noreload``: runserver closes the connections its start-up opened, before the first request."""
    with serving_demo(tmp_path, "--noreload") as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        open_panel(page, f"{url}/import-time/")
        [claim] = claims_of(page)
        assert (claim["listed"], claim["outcomes"]) == ("nowhere", "closed")
        check_claim(page.locator("#ConnectionsPanel"), claim)
        expect(page.locator("body")).to_contain_text("So the panel does not list it")
        expect(
            page.locator("#ConnectionsPanel .conntrace-badge.conntrace-before-first-request")
        ).to_have_count(0)
