"""The debug toolbar's Connections panel, through Django's real WSGI and ASGI handlers and a real fork().

Requests are served by ``WSGIHandler`` and closed as a WSGI server closes them
(``result.close()`` sends ``request_finished``): Django's test client would
disconnect ``close_old_connections`` and hide the close that ends a request.
The views are in ``tests/panel_views.py``; the demo under gunicorn is tested in ``tests/test_demo.py``.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
from asgiref.sync import async_to_sync
from django.core.signals import request_finished
from django.db import close_old_connections, connection
from django.test import override_settings

from conntrace import lifecycle, panel_timeline, panel_tracking, panels
from tests import pgserver
from tests.app.models import Setting
from tests.panel_views import (
    HOSTILE_ERROR,
    HOSTILE_FILE,
    HOSTILE_THREAD,
    observers_seen_by_views,
    release_threads,
    started_threads,
)
from tests.toolbar import REQUEST_END, behind_the_toolbar, closes, toolbar_config
from tests.wsgi import serve_wsgi

pytestmark = [pytest.mark.django_db(transaction=True)]


# --------------------------------------------------------------------------- serving the views, reading back

TOOLBAR_PANELS = [
    "debug_toolbar.panels.history.HistoryPanel",
    "conntrace.panels.ConnectionsPanel",
    # Stores its stats while the view runs: with the DatabaseStore, toolbar writes inside the request.
    "debug_toolbar.panels.headers.HeadersPanel",
]


@pytest.fixture
def toolbar() -> Iterator[None]:
    """Serve the views of ``tests/panel_views.py`` behind the debug toolbar with the Connections panel."""
    with behind_the_toolbar("tests.panel_views", TOOLBAR_PANELS):
        release_threads.clear()
        yield
        release_threads.set()
        for thread in started_threads:
            thread.join(10)
        started_threads.clear()


class Served(NamedTuple):
    status: str
    headers: dict[str, str]
    body: str

    @property
    def request_id(self) -> str:
        return self.headers["djdt-request-id"]

    @property
    def subtitle(self) -> str:
        match = re.search(r'class="ConnectionsPanel".*?<small>(.*?)</small>', self.body, re.S)
        assert match, "the Connections panel has no subtitle"
        return match.group(1)


def serve(path_info: str, query: str = "", cookie: str = "") -> Served:
    """Serve one request as a WSGI server does (request_finished included)."""
    return Served(*serve_wsgi(path_info, query, cookie))


def stored(request_id: str) -> dict[str, Any]:
    """Return the panel's stats as the toolbar's store gives them back (JSON round trip)."""
    from debug_toolbar.store import get_store

    return get_store().panel(request_id, "ConnectionsPanel")


def rendered_panel(request_id: str) -> str:
    served = serve("/__debug__/render_panel/", f"request_id={request_id}&panel_id=ConnectionsPanel")
    return json.loads(served.body)["content"]


def receiver_connected() -> bool:
    return any(entry[0][0] == panel_tracking.RECEIVER_UID for entry in request_finished.receivers)


# --------------------------------------------------------------------------- tests


@pytest.mark.drivers
def test_close_at_request_end_is_added_to_the_stored_stats_and_history(toolbar):
    connection.close()
    served = serve("/query/")
    assert served.status.startswith("200")
    assert served.subtitle == "1 opened · 0 reused · 0 warnings"
    assert connection.connection is None
    stats = stored(served.request_id)
    [entry] = stats["connections"]
    assert (entry["alias"], entry["vendor"], entry["origin"]) == ("default", "postgresql", "request")
    assert entry["opened_in"].endswith(" in query_view")
    assert isinstance(entry["backend_pid"], int)
    assert closes(entry) == [("closed", "at request end", REQUEST_END)]
    assert stats["request_end"] == "seen"
    history = json.loads(
        serve("/__debug__/history_sidebar/", f"request_id={served.request_id}&exclude_history=True").body
    )
    assert "1 opened · 0 reused · 0 warnings" in history["ConnectionsPanel"]["button"]
    content = rendered_panel(served.request_id)
    assert "at request end" in content
    assert REQUEST_END.replace("'", "&#x27;") in content


def test_double_close_at_request_end_gets_its_badge(toolbar):
    served = serve("/double/")
    # Before the end of the request the driver connection is already closed: one warning already.
    assert served.subtitle == "1 opened · 0 reused · 1 warning"
    stats = stored(served.request_id)
    [entry] = stats["connections"]
    assert [badge["kind"] for badge in entry["badges"]] == ["double-close"]
    # psycopg 3's close is a Python method: the view's own close is counted when it happened.
    assert closes(entry) == [
        ("closed", "during this request", None),
        ("already_closed", "at request end", REQUEST_END),
    ]
    assert [c["closed_by"] for c in entry["closes"]] == ["application", "application"]
    assert entry["closes"][0]["closed_in"].endswith("in double_close_view")
    assert stats["counts"] == {"opened": 1, "reused": 0, "warnings": 1}
    content = rendered_panel(served.request_id)
    assert "double close" in content
    assert "in double_close_view" in content


@pytest.mark.postgres
def test_a_session_the_server_ended_gets_the_lost_badge_with_its_cause(toolbar):
    served = serve("/lost/")
    [entry] = stored(served.request_id)["connections"]
    assert entry["lost"] == "terminated_by_admin"
    lost = [badge for badge in entry["badges"] if badge["kind"] == "lost"]
    assert [badge["label"] for badge in lost] == ["session lost"]
    assert "terminated_by_admin" in lost[0]["title"]
    assert entry["warnings"] >= 1
    assert "session lost" in rendered_panel(served.request_id)


def test_persistent_connection_is_reported_reused_with_who_opened_it(toolbar, conn_max_age):
    conn_max_age(60)
    connection.close()
    first = stored(serve("/query/").request_id)
    served = serve("/query/")
    second = stored(served.request_id)
    assert first["counts"] == {"opened": 1, "reused": 0, "warnings": 0}
    assert served.subtitle == "0 opened · 1 reused · 0 warnings"
    [entry] = second["connections"]
    assert entry["conn_id"] == first["connections"][0]["conn_id"]
    assert (entry["origin"], entry["opened_by_pid"], entry["opened_thread"]) == (
        "earlier",
        os.getpid(),
        "MainThread",
    )
    assert entry["opened_before_s"] > 0
    assert (entry["closes"], entry["state"], entry["at_request_end"]) == ([], "open", "kept")
    assert second["request_end"] == "none"
    assert "earlier: reused" in rendered_panel(served.request_id)


def test_stats_come_back_from_the_store_unchanged(toolbar):
    from debug_toolbar.toolbar import DebugToolbar

    made = []

    def keep(sender: Any, toolbar: Any, **kwargs: Any) -> None:
        made.append(toolbar)

    DebugToolbar._created.connect(keep)
    try:
        served = serve("/double/")
    finally:
        DebugToolbar._created.disconnect(keep)
    live = made[0].stats["ConnectionsPanel"]
    assert live["request_end"] == "seen"  # the live copy got the request-end update too
    assert stored(served.request_id) == live  # no tuple became a list, no key was dropped
    assert panels.render(stored(served.request_id)) == panels.render(live)


def test_paths_function_names_thread_names_and_errors_are_escaped(toolbar):
    served = serve("/hostile/")
    content = rendered_panel(served.request_id)
    stats = stored(served.request_id)
    assert any(entry["opened_in"].startswith(HOSTILE_FILE) for entry in stats["connections"])
    assert HOSTILE_THREAD in [other["thread"] for other in stats["others"]]
    for raw in (HOSTILE_FILE, HOSTILE_ERROR, HOSTILE_THREAD, "<module>", "<locals>"):
        assert raw not in content
    assert "/tmp/&lt;img src=x onerror=alert(1)&gt;.py:3 in open_from_hostile_file" in content
    assert "InterfaceError: &lt;script&gt;alert(&quot;close&quot;)&lt;/script&gt;" in content
    assert "&lt;b&gt;worker&lt;/b&gt;" in content
    assert pgserver.APP_PASSWORD not in content
    assert pgserver.APP_PASSWORD not in json.dumps(stats)


def test_connections_of_other_threads_are_listed_with_their_thread_and_line(toolbar):
    served = serve("/other-thread/")
    stats = stored(served.request_id)
    assert stats["connections"] == []
    [other] = [o for o in stats["others"] if o["thread"] == "background-worker"]
    assert other["alias"] == "default"
    assert other["opened_in"].endswith(" in hold_a_connection")
    assert other["pid"] == os.getpid()
    assert (other["thread_alive"], other["transaction_started_in"]) == (True, None)
    assert other["idle_s"] >= 0
    html = rendered_panel(served.request_id)
    assert "background-worker" in html
    assert "Idle" in html and "no transaction" in html and "thread ended" not in html


@pytest.mark.postgres
def test_forked_child_using_its_parents_connection_shows_the_fork_badge(toolbar, conn_max_age, settings):
    """A real fork(): the child serves a request on the connection it inherited (policy ``warn`` keeps it)."""
    settings.CONNTRACE = {"FORK_POLICY": "warn"}
    conn_max_age(60)  # so that the child's request start does not close the inherited connection
    connection.close()
    Setting.objects.count()
    parent = os.getpid()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: serve one request, send what the panel shows, leave without cleanup
        try:
            os.close(read_end)
            served = serve("/query/")
            payload = {"stats": stored(served.request_id), "html": rendered_panel(served.request_id)}
            with os.fdopen(write_end, "w") as out:
                out.write(json.dumps(payload))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as got:
        payload = json.loads(got.read())
    os.waitpid(child, 0)
    connection.close()
    stats = payload["stats"]
    [entry] = stats["connections"]
    assert (entry["origin"], entry["opened_by_pid"], entry["opened_by_other_process"]) == (
        "earlier",
        parent,
        True,
    )
    assert [badge["kind"] for badge in entry["badges"]] == ["fork-inherited"]
    assert stats["counts"] == {"opened": 0, "reused": 1, "warnings": 1}
    facts = stats["process"]
    assert (facts["forked_child"], facts["parent_pid"], facts["inherited_held"]) == (True, parent, 1)
    assert facts["pid"] == child
    assert "fork-inherited" in payload["html"]
    assert "(another process: inherited through fork)" in payload["html"]


def test_disabled_panel_registers_nothing_and_records_nothing(toolbar):
    observers_seen_by_views.clear()
    served = serve("/spy/", cookie="djdtConnectionsPanel=off")
    assert observers_seen_by_views == [[]]
    assert lifecycle.observers == []
    assert not receiver_connected()
    assert stored(served.request_id) == {}
    assert 'class="ConnectionsPanel"' not in served.body


def test_enabled_panel_listens_only_while_its_request_runs(toolbar):
    observers_seen_by_views.clear()
    serve("/spy/")
    assert observers_seen_by_views == [[panel_tracking.observe]]
    assert lifecycle.observers == []
    assert not receiver_connected()


def test_receiver_runs_after_close_old_connections_even_once_the_test_client_reordered_them():
    panel_tracking.connect_receiver_after_django()
    # What Django's test client does around every response:
    request_finished.disconnect(close_old_connections)
    request_finished.connect(close_old_connections)
    try:
        panel_tracking.connect_receiver_after_django()
        ids = [entry[0][0] for entry in request_finished.receivers]
        assert ids.index(id(close_old_connections)) < ids.index(panel_tracking.RECEIVER_UID)
    finally:
        request_finished.disconnect(dispatch_uid=panel_tracking.RECEIVER_UID)


def test_under_asgi_the_request_end_close_is_stored_too(toolbar):
    from asgiref.testing import ApplicationCommunicator
    from django.core.handlers.asgi import ASGIHandler

    async def get(path_info: str) -> dict[str, Any]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path_info,
            "raw_path": path_info.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
        }
        communicator = ApplicationCommunicator(ASGIHandler(), scope)
        await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
        start = await communicator.receive_output(10)
        await communicator.receive_output(10)
        await communicator.wait(10)  # the handler has closed the response: request_finished was sent
        return {key.decode(): value.decode() for key, value in start["headers"]}

    headers = async_to_sync(get)("/query/")
    stats = stored(headers["djdt-request-id"])
    [entry] = stats["connections"]
    assert entry["opened_thread"] != threading.current_thread().name  # the view ran in a worker thread
    assert closes(entry) == [("closed", "at request end", REQUEST_END)]
    assert stats["request_end"] == "seen"
    assert lifecycle.observers == []


@pytest.fixture
def database_store(toolbar: None) -> Iterator[None]:
    """Use the toolbar's DatabaseStore: its writes go through the ORM on the application's ``default``."""
    from debug_toolbar.models import HistoryEntry

    with override_settings(DEBUG_TOOLBAR_CONFIG=toolbar_config("DatabaseStore")):
        with connection.schema_editor() as editor:
            editor.create_model(HistoryEntry)
        try:
            yield
        finally:
            with connection.schema_editor() as editor:
                editor.delete_model(HistoryEntry)


def test_database_store_writes_are_the_toolbars_not_the_applications(database_store):
    connection.close()
    served = serve("/query/")
    # The stored update at request_finished had to reopen `default`: it was closed again.
    assert connection.connection is None
    stats = stored(served.request_id)
    [entry] = stats["connections"]  # no row for the store's own connection use
    assert entry["origin"] == "toolbar"  # the store opened it in DebugToolbar.__init__, before the view
    assert [badge["kind"] for badge in entry["badges"]] == ["toolbar"]
    assert closes(entry) == [("closed", "at request end", REQUEST_END)]
    assert stats["others"] == []
    assert stats["counts"] == {"opened": 1, "reused": 0, "warnings": 0}
    # A view that queries nothing: the store still opens, uses and closes `default`, and none of it shows.
    served = serve("/no-query/")
    assert served.subtitle == "0 opened · 0 reused · 0 warnings"
    assert stored(served.request_id)["connections"] == []
    assert stored(served.request_id)["others"] == []


def test_connection_opened_before_the_first_request_gets_a_badge_and_its_reason(
    toolbar, conn_max_age, monkeypatch
):
    """Opened while this process had begun no request (as at import time), then reused by one."""
    from conntrace import process

    conn_max_age(60)
    connection.close()
    monkeypatch.setattr(process, "request_gen", 0)
    Setting.objects.count()
    served = serve("/query/")
    [entry] = stored(served.request_id)["connections"]
    assert entry["origin"] == "earlier"
    [badge] = entry["badges"]
    assert (badge["kind"], badge["label"]) == ("before-first-request", "opened before the first request")
    assert badge["why"] == "a preforking server would share it with every worker; see preflight"
    assert entry["opened_relative"].endswith(" before the request")
    content = rendered_panel(served.request_id)
    assert "a preforking server would share it with every worker; see preflight" in content
    # Opened by a request, the next connection gets no such badge.
    connection.close()
    [again] = stored(serve("/query/").request_id)["connections"]
    assert again["badges"] == []


def test_timeline_has_a_lane_per_connection_with_its_marks_in_order(toolbar):
    connection.close()
    served = serve("/query/")
    stats = stored(served.request_id)
    [lane] = stats["timeline"]["lanes"]
    [entry] = stats["connections"]
    assert (lane["conn_id"], lane["earlier"], lane["age"]) == (entry["conn_id"], False, None)
    assert [mark["kind"] for mark in lane["marks"]] == ["opened", "used", "close", "end"]
    positions = [float(mark["left"]) for mark in lane["marks"]]
    assert positions == sorted(positions) and positions[0] >= 0 and positions[-1] == 100
    assert re.fullmatch(r"closed, \+\d+\.\d (ms|s) into the request", lane["marks"][2]["title"])
    [close] = entry["closes"]
    assert close["at_relative"] == panel_timeline.relative(close["at_ms"])
    assert 'class="conntrace-timeline"' in rendered_panel(served.request_id)


def test_connection_opened_by_another_process_gets_its_badge_and_its_reason(monkeypatch):
    """A record whose pid is not this process's, not marked inherited (no fork hook told conntrace)."""
    from conntrace import panel_stats, records
    from conntrace.names import Origin, PanelNote

    connection.close()
    connection.ensure_connection()
    [record] = [r for r in records.registry.open_records() if r.thread == threading.current_thread().name]
    monkeypatch.setattr(record, "pid", record.pid + 1)
    session = panel_tracking.Session()
    session.touched[record.conn_id] = panel_tracking.Touch(record, Origin.EARLIER, 0)
    stats = panel_stats.build_stats(session, request_end="none")
    [entry] = stats["connections"]
    assert entry["opened_by_other_process"] is True
    assert [(b["kind"], b["label"], b["why"]) for b in entry["badges"]] == [
        ("other-process", "opened by another process", PanelNote.SHARED_BY_WORKERS)
    ]
    assert "opened by another process" in panels.render(stats)


def test_connection_a_forked_worker_opened_before_its_first_request_is_its_own_no_badge(monkeypatch):
    """Opened after the fork, at the worker's start-up: no other process shares it."""
    from conntrace import panel_stats, process, records
    from conntrace.names import Origin

    monkeypatch.setattr(process, "request_gen", 0)
    connection.close()
    connection.ensure_connection()
    [record] = [r for r in records.registry.open_records() if r.thread == threading.current_thread().name]
    session = panel_tracking.Session()
    session.touched[record.conn_id] = panel_tracking.Touch(record, Origin.EARLIER, 0)
    kinds = [
        b["kind"] for b in panel_stats.build_stats(session, request_end="none")["connections"][0]["badges"]
    ]
    assert kinds == ["before-first-request"]
    monkeypatch.setattr(record, "fork_gen", 1)  # as if opened in a forked child (process.fork_gen alike)
    monkeypatch.setattr(process, "fork_gen", 1)
    assert panel_stats.build_stats(session, request_end="none")["connections"][0]["badges"] == []
