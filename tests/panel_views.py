"""The views ``tests/test_panels.py`` serves behind the debug toolbar, and their URLconf.

Each view leaves the Connections panel something to show: a query, none, a double close, connections
held by other threads, names and an error written in markup.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

from django.db import DatabaseError, connection, connections
from django.http import HttpRequest, HttpResponse
from django.urls import path

from conntrace import CloseErrorWarning, lifecycle
from tests.app.models import Setting
from tests.faults import FailingClose
from tests.toolbar import toolbar_urlconf


def html(text: str) -> HttpResponse:
    return HttpResponse(f"<html><body><p>{text}</p></body></html>")


def query_view(request: HttpRequest) -> HttpResponse:
    return html(str(Setting.objects.count()))


def no_query_view(request: HttpRequest) -> HttpResponse:
    return html("no query here")


def double_close_view(request: HttpRequest) -> HttpResponse:
    Setting.objects.count()
    connection.connection.close()  # behind Django's back: Django closes it again at request end
    return html("closed behind Django's back")


observers_seen_by_views: list[list[Any]] = []


def spy_view(request: HttpRequest) -> HttpResponse:
    observers_seen_by_views.append(list(lifecycle.observers))
    Setting.objects.count()
    return html("spy")


HOSTILE_FILE = "/tmp/<img src=x onerror=alert(1)>.py"
HOSTILE_ERROR = '<script>alert("close")</script>'
HOSTILE_THREAD = "<b>worker</b>"
_hostile: dict[str, Any] = {}
# Code whose file name is markup, as user data can be: the opening stack carries it.
exec(
    compile(
        "from django.db import connection\n"
        "def open_from_hostile_file():\n"
        "    with connection.cursor() as cursor:\n"
        "        cursor.execute('SELECT 1')\n",
        HOSTILE_FILE,
        "exec",
    ),
    _hostile,
)
# Threads started by the views hold their connection until the test has looked (set at teardown).
release_threads = threading.Event()
started_threads: list[threading.Thread] = []


def hold_a_connection(opened: threading.Event) -> None:
    Setting.objects.count()
    opened.set()
    release_threads.wait(10)
    connections.close_all()


def hostile_view(request: HttpRequest) -> HttpResponse:
    opened = threading.Event()
    thread = threading.Thread(target=hold_a_connection, args=(opened,), name=HOSTILE_THREAD)
    started_threads.append(thread)
    thread.start()
    opened.wait(5)
    _hostile["open_from_hostile_file"]()
    connection.connection = FailingClose(
        connection.connection, connection.Database.InterfaceError(HOSTILE_ERROR)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CloseErrorWarning)
        connection.close()
    return html("hostile")


def other_thread_view(request: HttpRequest) -> HttpResponse:
    opened = threading.Event()
    thread = threading.Thread(target=hold_a_connection, args=(opened,), name="background-worker")
    started_threads.append(thread)
    thread.start()
    opened.wait(5)
    return html("a thread holds a connection")


def lost_session_view(request: HttpRequest) -> HttpResponse:
    """Use a connection, then have the server end its session: the next query finds it gone."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")  # the server ends it
    except DatabaseError:
        pass
    return html("the session was lost")


__getattr__ = toolbar_urlconf(
    [
        path("query/", query_view),
        path("no-query/", no_query_view),
        path("double/", double_close_view),
        path("spy/", spy_view),
        path("hostile/", hostile_view),
        path("other-thread/", other_thread_view),
        path("lost/", lost_session_view),
    ]
)
