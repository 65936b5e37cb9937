"""The debug toolbar's "Connections" panel: the connections a request used, and how each one ended.

Add ``"conntrace.panels.ConnectionsPanel"`` to ``DEBUG_TOOLBAR_PANELS``. This is
the only module of conntrace that imports ``debug_toolbar``; the listening is in
``panel_tracking`` and the stats in ``panel_stats``.

Two traps shape it. The toolbar builds its stats before Django sends
``request_finished``, so the close that ends a request (``close_old_connections``)
comes after: the panel keeps listening until ``request_finished`` and then stores
this request's stats again, so that the panel and the History panel show the
whole life. And the toolbar's store keeps stats as JSON, its ``DatabaseStore``
writing them through the ORM: the stats are plain data, and the store's own
connection use is never shown as the application's.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Optional

from debug_toolbar.panels import Panel
from django.template import Context, Engine

from conntrace import panel_stats, panel_tracking, process
from conntrace.names import PanelNote, RequestEnd

TEMPLATE = "conntrace/panel.html"
WAIT_FOR_END_S = 1.0  # how long a stored panel waits for the close at the end of its request


def subtitle(counts: dict[str, int]) -> str:
    """Return the nav subtitle, e.g. ``"2 opened · 1 reused · 1 warning"``."""
    warnings = counts.get("warnings", 0)
    return (
        f"{counts.get('opened', 0)} opened · {counts.get('reused', 0)} reused · "
        f"{warnings} warning{'' if warnings == 1 else 's'}"
    )


def template_dirs() -> list[str]:
    """Return where the panel's template is: inside the installed package, or the checkout's ``templates/``.

    A wheel carries the top-level ``templates/`` folder as ``conntrace/templates``;
    an editable install leaves it beside the package.
    """
    here = Path(__file__).resolve().parent
    candidates = (here / "templates", here.parent / "templates")
    return [str(path) for path in candidates if (path / TEMPLATE).is_file()]


@functools.cache
def _engine() -> Engine:
    # An engine of our own: found the same way whatever the project's TEMPLATES say.
    return Engine(dirs=template_dirs(), app_dirs=False, autoescape=True)


def render(stats: dict[str, Any]) -> str:
    """Render the panel's HTML from its stats (live or read back from the toolbar's store)."""
    context = dict(stats)
    context["subtitle"] = subtitle(stats.get("counts") or {})
    context["notes"] = {note.name.lower(): note.value for note in PanelNote}
    return _engine().get_template(TEMPLATE).render(Context(context, autoescape=True))


class ConnectionsPanel(Panel):
    """Database connections the request used: who opened each one, every close and its outcome."""

    is_async = True
    title = "Connections"
    nav_title = "Connections"
    template = TEMPLATE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._session: Optional[panel_tracking.Session] = None

    @property
    def nav_subtitle(self) -> str:
        counts = self.get_stats().get("counts")
        return subtitle(counts) if counts else ""

    def enable_instrumentation(self) -> None:
        if process.active and self._session is None:
            self._session = panel_tracking.Session(save=self._store_again)
            panel_tracking.start(self._session)

    def disable_instrumentation(self) -> None:
        if self._session is not None:
            self._session.pause()

    def generate_stats(self, request: Any, response: Any) -> None:
        session = self._session
        if session is not None:
            for touch in session.touched.values():
                touch.closes_at_stats = touch.record.close_count
        stats = panel_stats.build_stats(session)
        self.record_stats(stats)
        if session is not None:
            session.stats_recorded = True
            if not session.end_pending:
                # Django will close none of them when the request ends: nothing more to listen for.
                panel_tracking.stop(session)

    def _store_again(self, session: panel_tracking.Session) -> None:
        self.record_stats(panel_stats.build_stats(session, request_end=RequestEnd.SEEN))

    @property
    def content(self) -> str:
        stats = self.get_stats()
        if self.from_store and stats.get("request_end") == RequestEnd.PENDING:
            stats = self._wait_for_request_end(stats)
        return render(stats)

    def _wait_for_request_end(self, stats: dict[str, Any]) -> dict[str, Any]:
        """Give the request's own process a moment to store the close that ended it."""
        deadline = time.monotonic() + WAIT_FOR_END_S
        while time.monotonic() < deadline:
            time.sleep(0.05)
            fresh = self.toolbar.store.panel(self.toolbar.request_id, self.panel_id)
            if fresh and fresh.get("request_end") != RequestEnd.PENDING:
                return fresh
        return stats
