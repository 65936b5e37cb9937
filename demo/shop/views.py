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
        "The classic bug (DEMO_IMPORT_TIME_QUERY=1): a connection opened while importing a module.",
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
    return page(request, "normal", settings=settings)


def persistent(request: HttpRequest) -> HttpResponse:
    count = Setting.objects.using("persistent").count()
    return page(request, "persistent", count=count)


def double_close(request: HttpRequest) -> HttpResponse:
    settings = list(Setting.objects.order_by("key"))
    # What some libraries and hand-written "cleanup" code do: close the driver
    # connection directly. Django still holds it and closes it again when the
    # request ends (CONN_MAX_AGE=0): the close that conntrace reports.
    connection.connection.close()
    return page(request, "double-close", settings=settings)


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
    return page(request, "close-fails", count=count, downgraded=connection.connection is None)


def import_time(request: HttpRequest) -> HttpResponse:
    mine = [r for r in conntrace.live() + conntrace.history() if "featured.py" in (r["opened_in"] or "")]
    return page(request, "import-time", enabled=featured.ENABLED, records=mine)


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
    return page(request, "thread-leak", thread_name=name, hold_s=THREAD_HOLD_S, aliases=list(connections))
