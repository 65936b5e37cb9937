"""What each demo page says the Connections panel shows for it, from conntrace's own records.

A page renders its claim as a sentence and as ``data-`` attributes (``shop/_claim.html``);
``tests/test_demo_pages.py`` opens each page and its panel in Chromium and compares them.
The claim is built from what happened (which records exist, how many closes they have), not
from what the page expects, so it stays true on SQLite and PostgreSQL, with either driver.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Optional

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

import conntrace

# Where the panel lists a connection.
USED = "used"  # "Connections used by this request"
OTHER = "other"  # "Other connections open in this process"
NOWHERE = "nowhere"  # closed before the request: the panel does not list it


@dataclass(frozen=True)
class Claim:
    """One connection as the page says the panel shows it."""

    alias: str
    listed: str  # USED, OTHER or NOWHERE
    conn_id: Optional[int] = None
    origin: str = ""  # USED: "request" (opened in it) or "earlier" (reused)
    open_at_end: bool = False  # still open once the request has ended
    outcomes: tuple[str, ...] = ()  # every close attempt's outcome the panel lists, in order
    closed_by_django: bool = False  # the last close is Django's, when the request ends
    badge: str = ""  # the kind of badge on it ("double-close", "before-first-request"...)
    badge_label: str = ""
    thread: str = ""

    def sentence(self) -> SafeString:
        """Say the claim in words, as the page shows it."""
        where = {
            USED: "under <em>Connections used by this request</em>",
            OTHER: "under <em>Other connections open in this process</em>",
            NOWHERE: "nowhere: it was closed before this request",
        }[self.listed]
        number = f" #{self.conn_id}" if self.conn_id else ""
        words = [f"connection{number} on <code>{escape(self.alias)}</code>, {where}"]
        if self.origin:
            words.append("opened in this request" if self.origin == "request" else "reused: opened earlier")
        if self.thread:
            words.append(f"held by thread <code>{escape(self.thread)}</code>")
        if self.outcomes:
            closes = ", then ".join(f"<code>{outcome}</code>" for outcome in self.outcomes)
            count = len(self.outcomes)
            words.append(f"{count} close attempt{'s' if count > 1 else ''}: {closes}")
        if self.closed_by_django:
            words.append("the last one by Django's <code>close_old_connections</code> when the request ends")
        if self.listed != NOWHERE:
            words.append("still open when the request ends" if self.open_at_end else "closed")
        if self.badge_label:
            words.append(f"with the badge <strong>{self.badge_label}</strong>")
        return mark_safe("; ".join(words) + ".")  # the names in it are escaped

    def attributes(self) -> dict[str, str]:
        """Return the claim as ``data-`` attributes, for a test to read."""
        return {
            "alias": self.alias,
            "listed": self.listed,
            "conn-id": str(self.conn_id or ""),
            "origin": self.origin,
            "open-at-end": "yes" if self.open_at_end else "no",
            "outcomes": " ".join(self.outcomes),
            "closed-by-django": "yes" if self.closed_by_django else "no",
            "badge": self.badge,
            "thread": self.thread,
        }


def open_record(alias: str, thread: Optional[str] = None) -> Optional[dict[str, Any]]:
    """Return conntrace's record of the connection ``thread`` (default: this one) holds on ``alias``."""
    name = thread or threading.current_thread().name
    return next((r for r in conntrace.live() if r["alias"] == alias and r["thread"] == name), None)


def latest_ended_record(alias: str) -> Optional[dict[str, Any]]:
    """Return the record of the connection this thread most recently closed on ``alias``."""
    name = threading.current_thread().name
    return next(
        (r for r in reversed(conntrace.history()) if r["alias"] == alias and r["thread"] == name), None
    )


def outcomes(record: Optional[dict[str, Any]]) -> tuple[str, ...]:
    """Return the outcomes of the close attempts conntrace saw on ``record`` so far."""
    return tuple(close["outcome"] for close in record["closes"]) if record else ()
