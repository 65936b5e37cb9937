"""The debug toolbar's Connections panel, through Django's real WSGI and ASGI handlers and under gunicorn.

Requests are served by ``WSGIHandler`` and closed as a WSGI server closes them
(``result.close()`` sends ``request_finished``): Django's test client would
disconnect ``close_old_connections`` and hide the close that ends a request.
This module is also the URLconf of the in-process tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from asgiref.sync import async_to_sync
from django.core.signals import request_finished
from django.db import close_old_connections, connection, connections
from django.http import HttpRequest, HttpResponse
from django.test import override_settings
from django.urls import include, path

from conntrace import CloseErrorWarning, lifecycle, panel_tracking, panels
from tests import pgserver
from tests.app.models import Setting
from tests.faults import FailingClose
from tests.wsgi import serve_wsgi

pytestmark = [pytest.mark.django_db(transaction=True)]

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"
REQUEST_END = "Django's close_old_connections at request_finished"


# --------------------------------------------------------------------------- views (this module is a URLconf)


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


def __getattr__(name: str) -> Any:
    """Build ``urlpatterns`` on demand: the toolbar's URLs import its models, installed by a fixture."""
    if name != "urlpatterns":
        raise AttributeError(name)
    return [
        path("query/", query_view),
        path("no-query/", no_query_view),
        path("double/", double_close_view),
        path("spy/", spy_view),
        path("hostile/", hostile_view),
        path("other-thread/", other_thread_view),
        path("__debug__/", include("debug_toolbar.urls")),
    ]


def show_toolbar(request: HttpRequest) -> bool:
    return True


# --------------------------------------------------------------------------- in-process helpers

TOOLBAR_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.staticfiles",
    "debug_toolbar",
    "conntrace",
    "tests.app",
]
TOOLBAR_SETTINGS: dict[str, Any] = {
    "MIDDLEWARE": ["debug_toolbar.middleware.DebugToolbarMiddleware"],
    "ROOT_URLCONF": "tests.test_panels",
    "STATIC_URL": "/static/",
    "TEMPLATES": [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}],
}
TOOLBAR_PANELS = [
    "debug_toolbar.panels.history.HistoryPanel",
    "conntrace.panels.ConnectionsPanel",
    # Stores its stats while the view runs: with the DatabaseStore, toolbar writes inside the request.
    "debug_toolbar.panels.headers.HeadersPanel",
]


def toolbar_config(store: str = "MemoryStore") -> dict[str, Any]:
    return {
        "SHOW_TOOLBAR_CALLBACK": "tests.test_panels.show_toolbar",
        "IS_RUNNING_TESTS": False,
        "TOOLBAR_STORE_CLASS": f"debug_toolbar.store.{store}",
    }


@pytest.fixture
def toolbar() -> Iterator[None]:
    """Serve this module's views behind the debug toolbar with the Connections panel."""
    # In this order: the toolbar's app reads STATIC_URL as soon as it is installed, and its
    # settings handlers import its models, which need the app installed.
    with (
        override_settings(**TOOLBAR_SETTINGS),
        override_settings(INSTALLED_APPS=TOOLBAR_APPS),
        override_settings(DEBUG_TOOLBAR_PANELS=TOOLBAR_PANELS, DEBUG_TOOLBAR_CONFIG=toolbar_config()),
    ):
        from debug_toolbar.middleware import show_toolbar_func_or_path
        from debug_toolbar.store import MemoryStore

        show_toolbar_func_or_path.cache_clear()
        MemoryStore.clear()
        release_threads.clear()
        yield
        release_threads.set()
        for thread in started_threads:
            thread.join(10)
        started_threads.clear()
    connections.close_all()


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


def closes(entry: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(c["outcome"], c["when"], c["by_django"]) for c in entry["closes"]]


def receiver_connected() -> bool:
    return any(entry[0][0] == panel_tracking.RECEIVER_UID for entry in request_finished.receivers)


# --------------------------------------------------------------------------- in-process tests


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
    assert closes(entry) == [("already_closed", "at request end", REQUEST_END)]
    assert entry["closes"][0]["closed_by"] == "application"
    assert stats["counts"] == {"opened": 1, "reused": 0, "warnings": 1}
    content = rendered_panel(served.request_id)
    assert "double close" in content
    assert "in double_close_view" in content


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
    assert "background-worker" in rendered_panel(served.request_id)


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


# --------------------------------------------------------------------------- the demo under gunicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def get(port: int, path_info: str) -> tuple[int, dict[str, str], str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path_info}", timeout=20) as response:
        return response.status, dict(response.headers), response.read().decode()


@pytest.fixture
def demo_database(pg: pgserver.PostgresServer) -> Iterator[str]:
    name = f"conntrace_demo_{os.getpid()}"
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    pg.psql(f"CREATE DATABASE {name} OWNER {pgserver.APP_USER}")
    yield name
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def stored_in_postgres(pg: pgserver.PostgresServer, database: str, request_id: str) -> dict[str, Any]:
    """Read the panel's stats straight from the toolbar's DatabaseStore table, once the request has ended."""
    deadline = time.monotonic() + 10
    while True:
        raw = pg.psql(
            f"SELECT data FROM debug_toolbar_historyentry WHERE request_id = '{request_id}'", database
        )
        data = json.loads(raw) if raw.strip() else {}
        stats = json.loads(data["ConnectionsPanel"]) if "ConnectionsPanel" in data else {}
        if stats.get("request_end") == "seen" or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.postgres
def test_gunicorn_workers_store_the_request_end_close_where_history_finds_it(pg, demo_database, tmp_path):
    """The demo on PostgreSQL: gunicorn --preload, 2 workers, DatabaseStore, the import-time query on."""
    _, port = pgserver.ensure()
    url = f"postgres://{pgserver.APP_USER}:{pgserver.APP_PASSWORD}@127.0.0.1:{port}/{demo_database}"
    env = demo_env(
        DATABASE_URL=url,
        DEMO_TOOLBAR_STORE="db",
        DEMO_IMPORT_TIME_QUERY="1",
        DEMO_LOG_FORMAT="json",
        DEMO_LOG_LEVEL="info",
    )
    # The demo's own set-up (DEMO_PYTHON: this environment, no virtualenv): it says where, then migrates.
    setup = subprocess.run(
        ["bash", str(DEMO / "run.sh")],
        env={**env, "DEMO_PYTHON": sys.executable, "DEMO_SETUP_ONLY": "1"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert setup.returncode == 0, setup.stderr
    assert f"== database: PostgreSQL database {demo_database!r} on 127.0.0.1:{port}" in setup.stdout
    assert pgserver.APP_PASSWORD not in setup.stdout + setup.stderr
    web_port = free_port()
    out_path, err_path = tmp_path / "gunicorn.out", tmp_path / "gunicorn.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "demosite.wsgi", "--preload", "--workers", "2",
             "--bind", f"127.0.0.1:{web_port}", "--graceful-timeout", "5"],
            cwd=DEMO, env=env, stdout=out, stderr=err,
        )  # fmt: skip
        try:
            wait_for_port(web_port, server)
            with ThreadPoolExecutor(4) as pool:
                responses = list(pool.map(lambda _: get(web_port, "/normal/"), range(8)))
            assert [status for status, _, _ in responses] == [200] * 8
            request_ids = [headers["djdt-request-id"] for _, headers, _ in responses]
            all_stats = [stored_in_postgres(pg, demo_database, rid) for rid in request_ids]
            history = json.loads(
                get(
                    web_port, f"/__debug__/history_sidebar/?request_id={request_ids[0]}&exclude_history=True"
                )[2]
            )
            content = json.loads(
                get(
                    web_port,
                    f"/__debug__/render_panel/?request_id={request_ids[-1]}&panel_id=ConnectionsPanel",
                )[2]
            )["content"]
            # Every request-end close happened; what stays open is the master's import-time connection.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                sessions = pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{demo_database}'")
                if sessions.strip() == "1":
                    break
                time.sleep(0.1)
            assert sessions.strip() == "1"
        finally:
            server.terminate()
            server.wait(20)
    worker_pids = set()
    for stats in all_stats:
        assert stats["request_end"] == "seen"
        [entry] = stats["connections"]  # the DatabaseStore's own writes show no row
        assert (entry["alias"], entry["vendor"], entry["origin"]) == ("default", "postgresql", "toolbar")
        assert isinstance(entry["backend_pid"], int)
        assert closes(entry) == [("closed", "at request end", REQUEST_END)]
        assert stats["others"] == []
        facts = stats["process"]
        assert (facts["forked_child"], facts["parent_pid"], facts["fork_policy"]) == (
            True,
            server.pid,
            "reset",
        )
        assert (facts["inherited_held"], facts["inherited_discarded"]) == (0, 1)
        worker_pids.add(facts["pid"])
    # Concurrent requests kept both workers busy: each stored its own requests' stats.
    assert len(worker_pids) == 2 and server.pid not in worker_pids
    assert "1 opened · 0 reused · 0 warnings" in history["ConnectionsPanel"]["button"]
    assert "at request end" in content and "backend PID (behind pgbouncer" in content
    events = [json.loads(line) for line in out_path.read_text().splitlines() if line.startswith("{")]
    at_fork = [e for e in events if e["event"] == "connection_open_at_fork"]
    inherited = [e for e in events if e["event"] == "connection_fork_inherited"]
    assert len(at_fork) == 2
    assert {e["pid"] for e in at_fork} == {server.pid}
    assert all(
        e["opened_in"].startswith("shop/featured.py:") and e["opened_in"].endswith(" in _site_name")
        for e in at_fork
    )
    assert inherited and {e["opened_by_pid"] for e in inherited} == {server.pid}
    assert server.pid not in {e["pid"] for e in inherited}
    for text in (out_path.read_text(), err_path.read_text(), content, json.dumps(all_stats)):
        assert pgserver.APP_PASSWORD not in text


@pytest.mark.slow
def test_run_gunicorn_script_prints_the_fork_diagnosis(tmp_path):
    """The README's second entry, ``demo/run-gunicorn.sh``, on SQLite: events name the import-time query."""
    env = demo_env(
        DEMO_PYTHON=sys.executable,
        DEMO_PORT=str(free_port()),
        DEMO_WORKERS="2",
        DEMO_SQLITE_PATH=str(tmp_path / "demo.sqlite3"),
    )
    env.pop("DATABASE_URL", None)
    run = subprocess.run(
        ["bash", str(DEMO / "run-gunicorn.sh")], env=env, capture_output=True, text=True, timeout=180
    )
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    at_fork = [e for e in events if e["event"] == "connection_open_at_fork"]
    inherited = [e for e in events if e["event"] == "connection_fork_inherited"]
    assert len(at_fork) == 2  # one per worker, reported by the master
    assert {e["level"] for e in at_fork} == {"warning"}
    assert {e["level"] for e in inherited} == {"error"}
    master = at_fork[0]["pid"]
    assert all(e["opened_in"].startswith("shop/featured.py:") for e in at_fork + inherited)
    assert inherited and {e["opened_by_pid"] for e in inherited} == {master}
    assert "== GET /normal/ -> 200" in run.stdout + run.stderr
    assert "== summary" in run.stdout


def test_database_url_is_parsed_and_described_without_the_password():
    spec = importlib.util.spec_from_file_location("demo_dburl", DEMO / "demosite" / "dburl.py")
    dburl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dburl)
    entry = dburl.parse("postgres://app:p%40ss%3Aw0rd@db.example:6432/shop?sslmode=require")
    assert entry == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "shop",
        "USER": "app",
        "PASSWORD": "p@ss:w0rd",
        "HOST": "db.example",
        "PORT": "6432",
        "OPTIONS": {"sslmode": "require"},
    }
    assert dburl.describe(entry) == "PostgreSQL database 'shop' on db.example:6432 as 'app'"
    socket_entry = dburl.parse("postgresql:///shop?host=/run/postgresql")
    assert (socket_entry["HOST"], socket_entry["PORT"], socket_entry["OPTIONS"]) == (
        "/run/postgresql",
        "",
        {},
    )
    assert dburl.parse("sqlite:////tmp/demo.sqlite3")["NAME"] == "/tmp/demo.sqlite3"
    with pytest.raises(ValueError, match="unsupported scheme"):
        dburl.parse("mysql://app:secret@db/shop")
