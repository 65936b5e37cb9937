"""The Connections panel as a person sees it: the demo served by ``demo/run.sh``, in headless Chromium.

Screenshots go to ``test-artifacts/``, named by page and viewport width.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser import chromium, open_panel, screenshot, serving_demo
from tests.support import DEMO

pytestmark = pytest.mark.slow

WIDTHS = (1024, 1280, 1920)
# Everything inside the panel's content area, measured once every <details> is open.
MEASURE_LAYOUT = """() => {
  const doc = document.getElementById("djDebugRoot").shadowRoot || document;  // the toolbar's shadow DOM
  const content = doc.querySelector("#ConnectionsPanel .djDebugPanelContent");
  const scroll = content.querySelector(".djdt-scroll");
  const box = scroll.getBoundingClientRect();
  const right = box.left + scroll.clientWidth;  // the scroll bar is not room for content
  const sidebar = doc.querySelector("#djDebugToolbar").getBoundingClientRect();
  const outside = [];
  for (const el of scroll.querySelectorAll(".conntrace-panel *")) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && (r.right > right + 0.5 || r.left < box.left - 0.5)) {
      outside.push(`${el.tagName}.${el.className} ${r.left.toFixed(1)}-${r.right.toFixed(1)}`);
    }
  }
  // A cell whose text runs out of it (a header that does not wrap): its own scroll width shows it.
  const spilling = [...scroll.querySelectorAll(".conntrace-panel th, .conntrace-panel td")]
    .filter(cell => cell.scrollWidth > cell.clientWidth + 1)
    .map(cell => `${cell.tagName} ${cell.textContent.trim().slice(0, 40)}`);
  return {
    spilling,
    content: [content.scrollWidth, content.clientWidth],
    scroll: [scroll.scrollWidth, scroll.clientWidth],
    tables: [...scroll.querySelectorAll("table")].map(t => [t.className, t.scrollWidth, t.clientWidth]),
    closes_right: Math.max(0, ...[...scroll.querySelectorAll(".conntrace-close, .conntrace-open")]
      .map(e => e.getBoundingClientRect().right)),
    content_right: right,
    sidebar_left: sidebar.left,
    outside,
  };
}"""


def line_of(path: Path, text: str, after: str) -> int:
    """Return the number of the first line holding ``text`` after the line holding ``after``."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if after in line)
    return next(i for i, line in enumerate(lines) if i > start and text in line) + 1


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo served by its own command, ``--noreload``: one process serves every request."""
    with serving_demo(tmp_path_factory.mktemp("demo"), "--noreload") as url:
        yield url


def test_double_close_page_shows_the_row_the_badge_and_the_opening_line(demo_url):
    opening_line = line_of(DEMO / "shop" / "views.py", "Setting.objects", after="def double_close(")
    with chromium() as browser:
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
        # Times are relative to the request; the absolute UTC time is on hover.
        when = row.locator(".conntrace-close .conntrace-when").last
        expect(when).to_have_text(re.compile(r"^\+\d+\.\d (ms|s) into the request$"))
        expect(when).to_have_attribute("title", re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00$"))
        shot = screenshot(page, "panel-double-close")
    assert shot.stat().st_size > 10_000


@pytest.mark.parametrize("slug", ["double-close", "thread-leak"])
def test_panel_fits_its_content_area_from_1024_px_up_with_every_stack_open(demo_url, slug):
    measured: dict[int, dict[str, Any]] = {}
    with chromium() as browser:
        for width in WIDTHS:
            page = browser.new_page(viewport={"width": width, "height": 900})
            open_panel(page, f"{demo_url}/{slug}/")
            for details in page.locator("#ConnectionsPanel details").all():
                details.evaluate("d => { d.open = true; }")
            measured[width] = page.evaluate(MEASURE_LAYOUT)
            screenshot(page, f"panel-{slug}-{width}")
            page.close()
    print(slug, {w: (m["scroll"], m["tables"], round(m["closes_right"])) for w, m in measured.items()})
    for width, m in measured.items():
        assert m["content"][0] <= m["content"][1], (width, m["content"])
        assert m["scroll"][0] <= m["scroll"][1], (width, m["scroll"])
        for name, scroll_width, client_width in m["tables"]:
            assert scroll_width <= client_width, (width, name, scroll_width, client_width)
        assert m["outside"] == [], (width, m["outside"][:5])
        assert m["spilling"] == [], (width, m["spilling"][:5])
        # The Closes column ends inside the content area, left of the toolbar's sidebar.
        assert m["closes_right"] <= min(m["content_right"], m["sidebar_left"]) + 0.5, (width, m)
    assert measured[1024]["tables"], "the panel shows at least one table"


def rgb(css: str) -> tuple[float, float, float, float]:
    """Parse a computed colour, ``rgb(r, g, b)`` or ``rgba(r, g, b, a)``."""
    parts = [float(p) for p in re.findall(r"[\d.]+", css)]
    return (parts[0], parts[1], parts[2], parts[3] if len(parts) > 3 else 1.0)


def over(color: tuple[float, ...], background: tuple[float, ...]) -> tuple[float, ...]:
    """Blend a translucent colour over an opaque background."""
    alpha = color[3]
    return tuple(color[i] * alpha + background[i] * (1 - alpha) for i in range(3))


def luminance(color: tuple[float, ...]) -> float:
    def channel(value: float) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(v) for v in color[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """The WCAG contrast ratio of two opaque colours (1 to 21)."""
    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


TIMELINE_COLOURS = """(theme) => {
  const doc = document.getElementById("djDebugRoot").shadowRoot || document;
  doc.querySelector("#djDebug").setAttribute("data-theme", theme);
  const lane = doc.querySelector("#ConnectionsPanel .conntrace-lane");
  const legend = doc.querySelector("#ConnectionsPanel .conntrace-legend");  // a key for every kind of mark
  let el = lane, background = "rgba(0, 0, 0, 0)";
  while (el && /rgba\\(0, 0, 0, 0\\)|transparent/.test(background)) {
    background = getComputedStyle(el).backgroundColor;
    el = el.parentElement;
  }
  const style = (selector, property) =>
    getComputedStyle((lane.querySelector(selector) || legend.querySelector(selector)))[property];
  return {
    background,
    label: getComputedStyle(lane.querySelector(".conntrace-lane-label")).color,
    opened: style(".conntrace-mark-opened", "backgroundColor"),
    close: style(".conntrace-mark-close", "backgroundColor"),
    warning: style(".conntrace-mark-close-warning", "backgroundColor"),
    end: style(".conntrace-mark-end", "borderLeftColor"),
    bar: style(".conntrace-bar", "backgroundColor"),
  };
}"""


def test_timeline_marks_stand_out_in_the_light_and_the_dark_theme(demo_url):
    """Contrast against the panel's background: 3:1 for marks (WCAG's for graphics), 4.5:1 for text."""
    colours = {}
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        open_panel(page, f"{demo_url}/double-close/")
        lane = page.locator("#ConnectionsPanel .conntrace-lane")
        expect(lane).to_have_count(1)
        # Opened, first use, Django's double close at request end (SQLite: the view's own close of the
        # driver connection is C code, unseen), the end.
        for kind in ("opened", "used", "close-warning", "end"):
            expect(lane.locator(f".conntrace-mark-{kind}")).to_have_count(1)
        expect(lane.locator(".conntrace-mark-close-warning")).to_have_attribute(
            "title", re.compile(r"^already_closed, \+\d+\.\d (ms|s) into the request$")
        )
        for theme in ("light", "dark"):
            computed = page.evaluate(TIMELINE_COLOURS, theme)
            colours[theme] = {key: rgb(value) for key, value in computed.items()}
            screenshot(page, f"panel-timeline-{theme}-1280")
    ratios = {}
    for theme, c in colours.items():
        background = c["background"]
        ratios[theme] = {
            key: round(contrast(over(c[key], background), background), 2)
            for key in ("label", "opened", "close", "warning", "end", "bar")
        }
    print(ratios)
    for theme, r in ratios.items():
        assert r["label"] >= 4.5, (theme, r)
        for key in ("opened", "close", "warning", "end"):
            assert r[key] >= 3, (theme, key, r)
        assert r["bar"] >= 1.5, (theme, r)  # the bar is a backdrop for the marks, not their carrier
    assert colours["light"]["background"] != colours["dark"]["background"]
    assert colours["light"]["close"] != colours["dark"]["close"]


LINE_CHECKS = """() => {
  const doc = document.getElementById("djDebugRoot").shadowRoot || document;
  const panel = doc.querySelector("#ConnectionsPanel");
  const top = el => el.getClientRects()[0].top;
  const text = el => {
    const range = document.createRange();
    range.selectNodeContents(el);
    return range.getBoundingClientRect();
  };
  const all = selector => [...panel.querySelectorAll(selector)];
  return {
    kept_lines: all(".conntrace-open .conntrace-nowrap").map(s => s.getClientRects().length),
    in_gaps: all(".conntrace-closed-in").map(d => top(d.querySelector("code")) - top(d)),
    empty_lines: all(".conntrace-close > div").filter(d => !d.textContent.trim()).length,
    // From the end of a label's text to the start of its value's.
    process_gaps: all("table.conntrace-process tr").map(
      tr => text(tr.querySelector("td")).left - text(tr.querySelector("th")).right),
  };
}"""


def test_cosmetics_kept_for_reuse_on_one_line_no_orphan_in_values_beside_labels(demo_url):
    found = {}
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1024, "height": 900})
        for slug in ("persistent", "persistent", "close-fails"):
            open_panel(page, f"{demo_url}/{slug}/")
            found[slug] = page.evaluate(LINE_CHECKS)
        screenshot(page, "panel-close-fails-1024")
    print(found)
    assert found["persistent"]["kept_lines"] == [1]  # "open: kept for reuse (CONN_MAX_AGE)", one line
    # "in" and the line it names start on the same line (a line is about 18 px).
    assert found["close-fails"]["in_gaps"] and all(abs(gap) < 6 for gap in found["close-fails"]["in_gaps"])
    assert found["close-fails"]["empty_lines"] == 0
    # Values beside their labels: the widest label ("forked child") sets the gap; a table as wide as
    # the panel put them hundreds of pixels apart.
    assert found["close-fails"]["process_gaps"] and max(found["close-fails"]["process_gaps"]) < 150
