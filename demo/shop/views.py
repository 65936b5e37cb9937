"""One page per connection story; open the toolbar's Connections panel on each."""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any

from django.db import connection, connections
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

import conntrace
from shop import featured
from shop.claims import NOWHERE, OTHER, USED, Claim, latest_ended_record, open_record, outcomes
from shop.models import Setting

PAGES = [
    (
        "normal",
        "A normal request",
        "One query on `default`: Django opens a connection and closes it when the request ends.",
    ),
    (
        "persistent",
        "A persistent connection",
        "Alias `persistent` has CONN_MAX_AGE=600: reload and the panel says the connection was reused.",
    ),
    (
        "double-close",
        "A double close",
        "The view closes the driver connection behind Django's back; Django closes it again at the end.",
    ),
    (
        "close-fails",
        "A close that fails",
        "The driver raises while closing (fault injection): conntrace downgrades the error to a warning.",
    ),
    (
        "import-time",
        "A query at import time",
        "The classic bug: a connection opened while importing a module (on unless DEMO_IMPORT_TIME_QUERY=0).",
    ),
    (
        "thread-leak",
        "A thread that keeps its connection",
        "A background thread queries and keeps its connection open, then ends without closing it.",
    ),
]
THREAD_HOLD_S = float(os.environ.get("DEMO_THREAD_HOLD_S", "20"))
_worker_numbers = itertools.count(1)


def page(request: HttpRequest, slug: str, **context: Any) -> HttpResponse:
    title, summary = next((t, s) for key, t, s in PAGES if key == slug)
    return render(
        request,
        f"shop/{slug}.html",
        {"title": title, "summary": summary, "site_name": featured.SITE_NAME, **context},
    )


def index(request: HttpRequest) -> HttpResponse:
    return render(request, "shop/index.html", {"pages": PAGES, "site_name": featured.SITE_NAME})


def normal(request: HttpRequest) -> HttpResponse:
    settings = list(Setting.objects.order_by("key"))
    record = open_record("default")
    claim = Claim("default", USED, record["conn_id"], "request", outcomes=("closed",), closed_by_django=True)
    return page(request, "normal", settings=settings, claims=[claim])


def persistent(request: HttpRequest) -> HttpResponse:
    reused = connections["persistent"].connection is not None
    count = Setting.objects.using("persistent").count()
    record = open_record("persistent")
    claim = Claim("persistent", USED, record["conn_id"], "earlier" if reused else "request", open_at_end=True)
    return page(request, "persistent", count=count, reused=reused, claims=[claim])


def double_close(request: HttpRequest) -> HttpResponse:
    settings = list(Setting.objects.order_by("key"))
    # What some libraries and hand-written "cleanup" code do: close the driver
    # connection directly. Django still holds it and closes it again when the
    # request ends (CONN_MAX_AGE=0): the close that conntrace reports.
    connection.connection.close()
    # The view's own close is seen when the driver's close() is Python code (psycopg 3), not C.
    record = open_record("default")
    claim = Claim(
        "default",
        USED,
        record["conn_id"],
        "request",
        outcomes=(*outcomes(record), "already_closed"),
        closed_by_django=True,
        badge="double-close",
        badge_label="double close",
    )
    return page(request, "double-close", settings=settings, claims=[claim])


class FailingClose:
    """Fault injection: a driver connection whose close() raises, as a broken socket can make it.

    No driver raises on close on demand, so the demo wraps the real connection:
    the real one is closed, then the error a broken pooler connection gives is raised.
    """

    def __init__(self, real: Any) -> None:
        self._real = real

    def close(self) -> None:
        self._real.close()
        raise connection.Database.InterfaceError("connection already closed (injected fault)")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def close_fails(request: HttpRequest) -> HttpResponse:
    count = Setting.objects.count()
    connection.connection = FailingClose(connection.connection)
    connection.close()  # raises inside the driver; conntrace turns it into a CloseErrorWarning
    record = latest_ended_record("default")
    claim = Claim(
        "default",
        USED,
        record["conn_id"],
        "request",
        outcomes=outcomes(record),
        badge="close-failed",
        badge_label="close error downgraded",
    )
    return page(request, "close-fails", count=count, downgraded=connection.connection is None, claims=[claim])


def import_time(request: HttpRequest) -> HttpResponse:
    mine = [r for r in conntrace.live() + conntrace.history() if "featured.py" in (r["opened_in"] or "")]
    return page(
        request, "import-time", enabled=featured.ENABLED, records=mine, claims=_import_time_claims(mine)
    )


def _import_time_claims(records: list[dict[str, Any]]) -> list[Claim]:
    """Say where the panel shows each import-time connection: open in another thread, or nowhere."""
    claims = []
    for record in records:
        if record["state"] != "open":
            claims.append(Claim(record["alias"], NOWHERE, record["conn_id"], outcomes=outcomes(record)))
        else:  # not this thread's: Django closed this thread's own at the request's start (CONN_MAX_AGE=0)
            claims.append(
                Claim(
                    record["alias"],
                    OTHER,
                    record["conn_id"],
                    open_at_end=True,
                    badge="before-first-request",
                    badge_label="opened before the first request",
                    thread=record["thread"],
                )
            )
    return claims


def thread_leak(request: HttpRequest) -> HttpResponse:
    opened = threading.Event()

    def work() -> None:
        Setting.objects.count()  # opens this thread's own connection
        opened.set()
        time.sleep(THREAD_HOLD_S)  # "waiting for more work", connection still open
        # ...and the thread ends without connections.close_all(): the connection is abandoned.

    name = f"demo-worker-{next(_worker_numbers)}"
    threading.Thread(target=work, name=name, daemon=True).start()
    opened.wait(5)
    record = open_record("default", thread=name)
    claim = Claim("default", OTHER, record["conn_id"] if record else None, open_at_end=True, thread=name)
    return page(
        request,
        "thread-leak",
        thread_name=name,
        hold_s=THREAD_HOLD_S,
        aliases=list(connections),
        claims=[claim],
    )
