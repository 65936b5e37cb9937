"""Security: no secret in anything conntrace writes, no frames or locals kept, hostile names escaped.

The tests connect as ``conntrace_app``, a role with a password (SCRAM), given in
``PASSWORD``, in ``OPTIONS`` and, for one alias, only inside a DSN-style
connection string (``conninfo`` for psycopg 3, ``dsn`` for psycopg2).
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import subprocess
import sys
import time
import types
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import OperationalError, connection, connections
from django.http import HttpRequest, HttpResponse
from django.urls import path

import conntrace
from conntrace import CloseErrorWarning, events, lifecycle, records
from tests import pgserver
from tests.faults import FailingClose
from tests.toolbar import behind_the_toolbar, show, toolbar_urlconf
from tests.wsgi import serve_wsgi

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SECRET = pgserver.APP_PASSWORD
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dsn_url() -> str:
    _, port = pgserver.ensure()
    return f"postgresql://{pgserver.APP_USER}:{SECRET}@127.0.0.1:{port}/conntrace"


@pytest.fixture
def dsn_wrapper(settings) -> Iterator[Any]:
    """Give a wrapper whose only password is inside a DSN-style OPTIONS entry, declared in DATABASES."""
    base = connections["default"].settings_dict
    key = "conninfo" if connection.Database.__name__ == "psycopg" else "dsn"
    dsn_settings = {**base, "PASSWORD": "", "HOST": "", "PORT": "", "OPTIONS": {key: dsn_url()}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Django warns that overriding DATABASES is unusual
        settings.DATABASES = {**settings.DATABASES, "dsn": dsn_settings}
    settings.DATABASE_URL = dsn_url()  # the dj-database-url habit: the whole DSN in a setting
    wrapper = type(connections["default"])(dsn_settings, alias="dsn")
    yield wrapper
    wrapper.close()


def everything_conntrace_said(logs: list[dict[str, Any]], caught: list[Any]) -> str:
    return json.dumps(
        {
            "events": logs,
            "live": conntrace.live(),
            "history": conntrace.history(),
            "warnings": [str(w.message) for w in caught],
        },
        default=repr,
    )


@pytest.mark.drivers
def test_no_event_record_or_warning_contains_the_password(dsn_wrapper, captured, pg, settings):
    # A whole life over the DSN: use, a close error quoting the DSN, a server kill, a direct driver close.
    with dsn_wrapper.cursor() as cursor:
        cursor.execute("SELECT current_user")
        assert cursor.fetchone() == (pgserver.APP_USER,)
    quoted = f"could not send to {dsn_url()} (password={SECRET}, dsn='host=x password={SECRET}')"
    dsn_wrapper.connection = FailingClose(
        dsn_wrapper.connection, dsn_wrapper.Database.OperationalError(quoted)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dsn_wrapper.close()
    assert [type(w.message) for w in caught] == [CloseErrorWarning]
    dsn_wrapper.ensure_connection()
    killed = lifecycle.record_of(dsn_wrapper).backend_pid
    pg.psql(f"SELECT pg_terminate_backend({killed})")
    for _ in range(100):  # until the backend has gone and its goodbye reached the socket
        if pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {killed}").strip() == "0":
            break
        time.sleep(0.05)
    dsn_wrapper.close()
    dsn_wrapper.ensure_connection()
    dsn_wrapper.connection.close()
    dsn_wrapper.close()
    events.internal_error("security_test", ValueError(f"config was {dsn_url()}"))
    said = everything_conntrace_said(captured, caught)
    assert SECRET not in said
    assert said.count("***") >= 4  # the redactions are there, not just missing text
    outcomes = [c["outcome"] for r in conntrace.history() if r["alias"] == "dsn" for c in r["closes"]]
    # psycopg 3's close is a Python method: the direct close is counted too, when it happens.
    direct = ["closed"] if dsn_wrapper.Database.__name__ == "psycopg" else []
    assert outcomes == ["failed", "already_closed", *direct, "already_closed"]


def test_inherited_connection_error_names_the_opening_line_not_the_password(dsn_wrapper, settings):
    """FORK_POLICY "raise": the child's exception message, sent back to the parent through a pipe."""
    settings.CONNTRACE = {"FORK_POLICY": "raise"}
    dsn_wrapper.ensure_connection()  # the opening line
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            try:
                dsn_wrapper.ensure_connection()
                message = "nothing raised"
            except conntrace.InheritedConnectionError as exc:
                message = str(exc)
            os.write(write_end, message.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        message = pipe.read()
    os.waitpid(pid, 0)
    assert "database connection 'dsn' was opened by process" in message
    assert "test_security.py" in message and "in test_inherited_connection_error_names" in message
    assert SECRET not in message and "conninfo" not in message and "dsn=" not in message


def test_a_failed_login_leaves_no_record_and_no_password(captured):
    """A wrong password: Django's own exception propagates unchanged; conntrace adds nothing that leaks."""
    wrong = {**connections["default"].settings_dict, "PASSWORD": "not-" + SECRET, "OPTIONS": {}}
    wrapper = type(connections["default"])(wrong, alias="wrong-password")
    with pytest.raises(OperationalError) as raised:
        wrapper.ensure_connection()
    assert "password authentication failed" in str(raised.value)
    assert [r for r in conntrace.live() if r["alias"] == "wrong-password"] == []
    assert SECRET not in json.dumps(captured, default=repr)


# --------------------------------------------------------------------------- no frames, no locals


class Big:
    """A large object that only a local variable refers to."""

    def __init__(self) -> None:
        self.payload = bytearray(8 * 1024 * 1024)


def open_holding_a_big_local() -> weakref.ref:
    big = Big()
    connection.ensure_connection()  # the stack captured here includes this frame
    return weakref.ref(big)


def close_holding_a_big_local() -> weakref.ref:
    big = Big()
    connection.close()
    return weakref.ref(big)


def assert_raw_stack(stack: Any) -> None:
    """A raw stack is one flat tuple of code objects and instruction offsets, nothing else."""
    assert type(stack) is tuple and len(stack) % 2 == 0
    for code, lasti in zip(stack[::2], stack[1::2], strict=True):
        assert type(code) is types.CodeType and type(lasti) is int


def test_locals_at_connect_and_close_are_freed_when_the_function_returns():
    connection.close()
    gc.disable()  # freed by reference counting alone: nothing may hold the frame
    try:
        opened = open_holding_a_big_local()
        assert opened() is None
        closed = close_holding_a_big_local()
        assert closed() is None
    finally:
        gc.enable()
    record = conntrace.history()[-1]
    assert record["opened_in"].endswith(" in open_holding_a_big_local")
    assert record["closes"][0]["closed_in"].endswith(" in close_holding_a_big_local")


def test_stacks_hold_code_objects_and_offsets_only():
    connection.close()
    open_holding_a_big_local()
    close_holding_a_big_local()
    open_holding_a_big_local()
    kept = [*records.registry.open_records(), *records.registry.ended_records()]
    assert kept
    for record in kept:
        assert_raw_stack(record.stack)
        for attempt in record.closes:
            assert_raw_stack(attempt.stack)
        assert not any(isinstance(ref, types.FrameType) for ref in gc.get_referents(record))
    json.dumps(conntrace.live())  # plain data only
    json.dumps(conntrace.history())


def test_a_thread_that_ends_holding_its_connection_frees_its_locals():
    import threading

    refs: list[weakref.ref] = []

    def work() -> None:
        big = Big()
        refs.append(weakref.ref(big))
        connections["default"].ensure_connection()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    del thread
    gc.collect()
    conntrace.live()  # flushes the abandoned report
    assert refs[0]() is None


# --------------------------------------------------------------------------- the debug toolbar panel

SCRIPT = "<script>alert(1)</script>"
HOSTILE_QUALNAME = f"{SCRIPT}.opener"


def hostile_module(root: Path) -> types.ModuleType:
    """Import a real module from a directory whose path spells ``<script>alert(1)</script>``."""
    folder = root / "<script>alert(1)<" / "script>"  # a "/" cannot be in a name: it is the separator
    folder.mkdir(parents=True)
    (folder / "hostile_opener.py").write_text(
        "from django.db import connection\n\n\n"
        "def opener():\n"
        "    with connection.cursor() as cursor:\n"
        "        cursor.execute('SELECT 1')\n"
    )
    sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module("hostile_opener")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("hostile_opener", None)
    assert SCRIPT in module.__file__
    # A function name no source can spell, as generated code (templates, ORMs, exec) can have.
    code = module.opener.__code__
    module.opener.__code__ = code.replace(co_name=SCRIPT, co_qualname=HOSTILE_QUALNAME)
    return module


opened_by: dict[str, Any] = {}


def hostile_view(request: HttpRequest) -> HttpResponse:
    connection.close()
    opened_by["module"].opener()
    quoted = f"server said {SCRIPT} for {dsn_url()}"
    connection.connection = FailingClose(connection.connection, connection.Database.InterfaceError(quoted))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CloseErrorWarning)
        connection.close()
    opened_by["observers"] = list(lifecycle.observers)
    return HttpResponse("<html><body>hostile</body></html>")


__getattr__ = toolbar_urlconf([path("hostile/", hostile_view)])  # this module is the URLconf

TOOLBAR_PANELS = [
    "debug_toolbar.panels.history.HistoryPanel",  # the panel that sends the djdt-request-id header
    "conntrace.panels.ConnectionsPanel",
]


@pytest.fixture
def toolbar(tmp_path: Path) -> Iterator[None]:
    """Serve this module's view behind the debug toolbar, its opener imported from a hostile path."""
    opened_by["module"] = hostile_module(tmp_path)
    with behind_the_toolbar(__name__, TOOLBAR_PANELS):
        yield


def serve(path_info: str, query: str = "") -> tuple[int, dict[str, str], str]:
    """Serve one request as a WSGI server does; return (status code, headers, body)."""
    status, headers, body = serve_wsgi(path_info, query)
    return int(status.split()[0]), headers, body


def render_panel(request_id: str) -> tuple[int, str]:
    status, _, body = serve("/__debug__/render_panel/", f"request_id={request_id}&panel_id=ConnectionsPanel")
    return status, json.loads(body)["content"] if status == 200 else body


def test_panel_escapes_hostile_paths_function_names_and_errors_and_shows_no_password(toolbar):
    status, headers, page = serve("/hostile/")
    assert status == 200
    assert 'id="djDebug"' in page and "ConnectionsPanel" in page
    status, content = render_panel(headers["djdt-request-id"])
    assert status == 200
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"{escaped}/hostile_opener.py:5 in {escaped}.opener" in content  # path and function name
    assert f"InterfaceError: server said {escaped} for postgresql://conntrace_app:***@" in content
    assert SCRIPT not in content and "<script" not in content
    assert SECRET not in content + page


def test_panel_is_shown_only_when_the_toolbars_callback_allows(toolbar):
    show["toolbar"] = False
    status, headers, page = serve("/hostile/")
    assert status == 200
    assert "djdt-request-id" not in headers
    assert "djDebug" not in page and "ConnectionsPanel" not in page
    assert opened_by["observers"] == []  # the panel did not even listen
    show["toolbar"] = True
    _, headers, page = serve("/hostile/")
    assert "ConnectionsPanel" in page
    assert len(opened_by["observers"]) == 1  # listening while its request runs
    show["toolbar"] = False  # the toolbar's own views ask the same callback
    assert render_panel(headers["djdt-request-id"])[0] == 404
    show["toolbar"] = True
    status, content = render_panel(headers["djdt-request-id"])
    assert status == 200 and "hostile_opener.py" in content


# --------------------------------------------------------------------------- preflight output

LEAKY_SETTINGS = """
SECRET_KEY = "x"
INSTALLED_APPS = ["conntrace"]
DATABASES = {{
    "default": {{
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "conntrace",
        "OPTIONS": {{{dsn_key!r}: {dsn!r}}},
    }},
}}
DATABASE_URL = {dsn!r}
"""

LEAKY_WSGI = """
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leaky_settings")
from django.core.wsgi import get_wsgi_application
application = get_wsgi_application()
from django.db import connection
with connection.cursor() as cursor:  # a query at import time: the connection crosses the fork
    cursor.execute("SELECT 1")
"""

FAILING_WSGI = """
raise ConnectionError("cannot connect: host=127.0.0.1 user=conntrace_app password={secret} dbname=shop")
"""


@pytest.mark.parametrize("output", ["text", "json"])
@pytest.mark.parametrize("target", ["leaky_wsgi", "failing_wsgi"])
def test_preflight_output_never_contains_the_password(tmp_path, target, output):
    """The only password is inside a DSN-style OPTIONS entry (and a DATABASE_URL setting)."""
    key = "conninfo"  # the subprocess runs on psycopg 3 (Django prefers it whenever it imports)
    (tmp_path / "leaky_settings.py").write_text(LEAKY_SETTINGS.format(dsn_key=key, dsn=dsn_url()))
    (tmp_path / "leaky_wsgi.py").write_text(LEAKY_WSGI)
    (tmp_path / "failing_wsgi.py").write_text(FAILING_WSGI.format(secret=SECRET))
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    env["PYTHONPATH"] = ROOT
    command = [
        sys.executable,
        "-m",
        "conntrace",
        "preflight",
        target,
        *(["--json"] if output == "json" else []),
    ]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == (1 if target == "leaky_wsgi" else 2), run.stderr
    assert SECRET not in run.stdout + run.stderr
    if target == "leaky_wsgi":
        assert "leaky_wsgi.py:7 in <module>" in run.stdout  # the report is there, only the secret is not
    else:
        assert "password=***" in run.stdout + run.stderr
