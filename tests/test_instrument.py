"""The life of a connection as conntrace records it, on real PostgreSQL and SQLite."""

from __future__ import annotations

import gc
import threading
import warnings
from typing import Any

import pytest
from django.core.signals import request_started
from django.db import connection, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

import conntrace
from conntrace import CloseErrorWarning, events, instrument, lifecycle, process
from tests.conftest import named
from tests.faults import FailingClose

pytestmark = [pytest.mark.django_db(transaction=True, databases=["default", "other", "lite"])]


def open_and_query(alias: str = "default") -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")


def backend_pid() -> int:
    """Return the server's pid for ``default``'s session, as the driver (psycopg 3 or psycopg2) knows it."""
    driver_connection = connection.connection
    if hasattr(driver_connection, "info"):
        return driver_connection.info.backend_pid
    return driver_connection.get_backend_pid()


def this_line_marker() -> str:
    return __file__


@pytest.mark.drivers
def test_open_close_reopen_emits_events_with_every_field(captured):
    connection.close()
    open_and_query()
    connection.close()
    open_and_query()
    opened = named(captured, "connection_opened")
    closed = named(captured, "connection_closed")
    assert len(opened) == 2
    assert len(closed) == 1
    first = opened[0]
    for field in ("alias", "vendor", "conn_id", "pid", "thread", "backend_pid", "opened_in", "opened_stack"):
        assert field in first, field
    assert first["alias"] == "default"
    assert first["vendor"] == "postgresql"
    assert first["thread"] == "MainThread"
    assert isinstance(first["backend_pid"], int) and first["backend_pid"] > 0
    assert opened[1]["conn_id"] != first["conn_id"]
    assert opened[1]["backend_pid"] != first["backend_pid"]
    assert closed[0]["conn_id"] == first["conn_id"]
    assert closed[0]["outcome"] == "closed"
    assert closed[0]["close_count"] == 1
    assert closed[0]["age_s"] >= 0
    assert all(line.count(":") >= 1 and " in " in line for line in first["opened_stack"])


@pytest.mark.drivers
def test_backend_pid_is_the_servers_own_id_without_a_query():
    connection.close()
    open_and_query()
    [record] = [r for r in conntrace.live() if r["alias"] == "default"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert record["backend_pid"] == cursor.fetchone()[0]


def test_opened_in_points_at_the_tests_own_line():
    connection.close()
    with connection.cursor() as cursor:  # the opening line
        cursor.execute("SELECT 1")
    [record] = [r for r in conntrace.live() if r["alias"] == "default"]
    path, rest = record["opened_in"].split(":", 1)
    line, func = rest.split(" in ")
    assert path.endswith("tests/test_instrument.py")
    assert func == "test_opened_in_points_at_the_tests_own_line"
    from pathlib import Path

    source = Path(__file__).read_text().splitlines()[int(line) - 1]
    assert "the opening line" in source
    assert not any("django/" in frame for frame in record["opened_stack"])
    assert any("django/db/backends" in frame for frame in record["opened_stack_full"])


def test_live_and_history_are_json_serialisable():
    import json

    connection.close()
    open_and_query()
    assert json.loads(json.dumps(conntrace.live()))
    connection.close()
    assert json.loads(json.dumps(conntrace.history()))[-1]["state"] == "ended"
    assert not [r for r in conntrace.live() if r["alias"] == "default"]


def test_sqlite_is_covered_by_the_same_wrappers(captured):
    lite = connections["lite"]
    lite.close()
    open_and_query("lite")
    lite.close()
    [opened] = named(captured, "connection_opened")
    [closed] = named(captured, "connection_closed")
    assert opened["vendor"] == "sqlite"
    assert opened["backend_pid"] is None
    assert closed["outcome"] == "closed"


def test_multiple_aliases_get_separate_records():
    for alias in ("default", "other", "lite"):
        connections[alias].close()
        open_and_query(alias)
    live = {r["alias"]: r for r in conntrace.live()}
    assert set(live) == {"default", "other", "lite"}
    assert len({r["conn_id"] for r in live.values()}) == 3
    assert live["default"]["backend_pid"] != live["other"]["backend_pid"]


def test_connection_opened_in_another_thread_records_that_thread():
    def work() -> None:
        open_and_query()
        connections["default"].close()

    thread = threading.Thread(target=work, name="worker-7")
    thread.start()
    thread.join()
    [record] = [r for r in conntrace.history() if r["thread"] == "worker-7"]
    assert record["closes"][0]["thread"] == "worker-7"
    assert record["closes"][0]["outcome"] == "closed"


def test_thread_that_ends_holding_its_connection_is_reported_abandoned(captured):
    def work() -> None:
        open_and_query()

    thread = threading.Thread(target=work, name="leaky-thread")
    thread.start()
    thread.join()
    del thread
    gc.collect()
    live = conntrace.live()  # flushes reports queued by the garbage collector
    assert not [r for r in live if r["thread"] == "leaky-thread"]
    [event] = named(captured, "connection_abandoned")
    assert event["opened_thread"] == "leaky-thread"
    assert event["opened_in"].endswith(" in open_and_query")
    assert event["opened_stack"][1].endswith(
        " in test_thread_that_ends_holding_its_connection_is_reported_abandoned.<locals>.work"
    )
    assert event["log_level"] == "warning"
    [record] = [r for r in conntrace.history() if r["thread"] == "leaky-thread"]
    assert record["closes"][-1]["outcome"] == "abandoned"


def test_double_close_through_django_is_a_quiet_noop_with_the_earlier_closer(
    captured, no_warnings, conn_max_age
):
    """The old workaround: close at request_started, then Django closes again."""
    conn_max_age(60)  # so that only the workaround closes at request start

    def close_at_request_start(**kwargs: Any) -> None:
        connection.close()  # the workaround's close

    connection.close()
    open_and_query()
    request_started.connect(close_at_request_start)
    try:
        request_started.send(sender=None)
    finally:
        request_started.disconnect(close_at_request_start)
    connection.close()  # Django's own close
    record = conntrace.history()[-1]
    assert [c["outcome"] for c in record["closes"]] == ["closed", "noop"]
    assert record["closes"][0]["closed_in"].endswith(".<locals>.close_at_request_start")
    assert record["close_count"] == 2
    assert not [e for e in captured if e["log_level"] == "warning"]


def test_close_all_on_closed_connections_stays_quiet(captured, no_warnings):
    open_and_query()
    connections.close_all()
    connections.close_all()
    assert not [e for e in captured if e["log_level"] in ("warning", "error")]


@pytest.mark.drivers
def test_driver_connection_closed_directly_then_django_close_is_a_double_close(captured):
    connection.close()
    open_and_query()
    connection.connection.close()  # user code closes the driver connection behind Django's back
    connection.close()
    [event] = named(captured, "connection_double_close")
    assert event["closed_by"] == "application"
    assert event["log_level"] == "warning"
    assert event["closes"][-1]["outcome"] == "already_closed"
    assert connection.connection is None


@pytest.mark.drivers
def test_session_killed_by_the_server_then_closed_reports_closed_by_server(captured, pg):
    connection.close()
    open_and_query()
    backend = backend_pid()
    pg.psql(f"SELECT pg_terminate_backend({backend})")
    import time

    time.sleep(0.2)
    connection.close()
    [event] = named(captured, "connection_double_close")
    assert event["closed_by"] == "server"
    assert event["backend_pid"] == backend
    open_and_query()  # the next use reconnects
    assert connection.connection is not None


def _terminate_current_session(pg) -> int:
    backend = backend_pid()
    pg.psql(f"SELECT pg_terminate_backend({backend})")
    return backend


@pytest.mark.drivers
def test_sessions_younger_than_socket_check_after_s_rely_on_the_drivers_flag(captured, pg, settings):
    """The socket is polled at close only from SOCKET_CHECK_AFTER_S on (1 s by default).

    A younger session the server ended unseen (no query since) reads as a normal
    close: any query after the end would have set the driver's own flag.
    """
    import time

    settings.CONNTRACE = {**settings.CONNTRACE, "SOCKET_CHECK_AFTER_S": 0.5}
    connection.close()
    open_and_query()
    _terminate_current_session(pg)
    time.sleep(0.1)
    connection.close()
    assert named(captured, "connection_double_close") == []
    assert conntrace.history()[-1]["closes"][-1]["outcome"] == "closed"

    open_and_query()
    backend = _terminate_current_session(pg)
    time.sleep(0.6)
    connection.close()
    [event] = named(captured, "connection_double_close")
    assert (event["closed_by"], event["backend_pid"]) == ("server", backend)


@pytest.mark.drivers
def test_a_query_after_the_server_ended_a_young_session_is_seen_without_the_socket_check(
    captured, pg, settings
):
    import time

    from django.db import OperationalError

    settings.CONNTRACE = {**settings.CONNTRACE, "SOCKET_CHECK_AFTER_S": 60}
    connection.close()
    open_and_query()
    _terminate_current_session(pg)
    time.sleep(0.1)
    with pytest.raises(OperationalError):
        open_and_query()
    connection.close()
    [event] = named(captured, "connection_double_close")
    assert event["closed_by"] == "server"


def test_close_from_async_code_raises_djangos_error_and_the_session_stays_recorded(captured):
    """Django refuses to close from an event loop before doing anything: conntrace records nothing."""
    import asyncio

    from django.core.exceptions import SynchronousOnlyOperation

    connection.close()
    open_and_query()
    [opened] = [r for r in conntrace.live() if r["alias"] == "default"]

    async def close_in_event_loop() -> None:
        connection.close()

    with pytest.raises(SynchronousOnlyOperation):
        asyncio.run(close_in_event_loop())
    [still] = [r for r in conntrace.live() if r["alias"] == "default"]
    assert (still["conn_id"], still["close_count"], still["closes"]) == (opened["conn_id"], 0, [])
    connection.close()
    assert conntrace.history()[-1]["closes"][0]["outcome"] == "closed"
    assert [e for e in captured if e["log_level"] == "warning"] == []


def test_a_shallow_copy_of_a_connected_wrapper_gets_records_of_its_own(captured):
    """copy.copy() shares conntrace's attributes: the copy's connect must not end the original's record."""
    import copy

    from django.db import connections

    lite = connections["lite"]
    original = type(lite)(lite.settings_dict, alias="lite-copied")
    original.ensure_connection()
    duplicate = copy.copy(original)
    duplicate.connection = None
    [kept] = [r for r in conntrace.live() if r["alias"] == "lite-copied"]
    duplicate.ensure_connection()
    duplicate.close()
    assert [r["conn_id"] for r in conntrace.live() if r["alias"] == "lite-copied"] == [kept["conn_id"]]
    assert conntrace.history()[-1]["closes"][0]["outcome"] == "closed"
    original.close()
    assert [r for r in conntrace.live() if r["alias"] == "lite-copied"] == []
    assert [e for e in captured if e["log_level"] == "warning"] == []


@pytest.mark.drivers
def test_a_connect_that_fails_leaves_no_record_behind(captured):
    """The record is registered before the driver's connect; a refused connect takes it back."""
    from django.db import OperationalError

    pg = connections["default"]
    unreachable = type(pg)({**pg.settings_dict, "HOST": "127.0.0.1", "PORT": "1"}, alias="unreachable")
    before = {r["conn_id"] for r in conntrace.live()}
    for _ in range(2):
        with pytest.raises(OperationalError):
            unreachable.ensure_connection()
    assert {r["conn_id"] for r in conntrace.live()} == before
    assert [r for r in conntrace.history() if r["alias"] == "unreachable"] == []
    assert lifecycle.record_of(unreachable) is None
    assert [e for e in captured if e["log_level"] != "debug"] == []
    unreachable.close()  # Django's close on a never-connected wrapper: nothing to record
    assert [e for e in captured if e["log_level"] != "debug"] == []


def test_a_failed_reconnect_keeps_the_previous_record_ended(captured):
    from django.db import OperationalError

    lite = connections["lite"]
    wrapper = type(lite)(lite.settings_dict, alias="lite-reconnect")
    wrapper.ensure_connection()
    wrapper.close()
    first = lifecycle.record_of(wrapper)
    wrapper.settings_dict = {**wrapper.settings_dict, "NAME": "/nonexistent-dir/x.sqlite3"}
    with pytest.raises(OperationalError):
        wrapper.ensure_connection()
    assert lifecycle.record_of(wrapper) is first and first.state == "ended"
    assert [r for r in conntrace.live() if r["alias"] == "lite-reconnect"] == []
    assert [e for e in captured if e["log_level"] != "debug"] == []


def test_close_error_is_downgraded_to_a_warning(captured):
    connection.close()
    open_and_query()
    error = connection.Database.InterfaceError("connection already closed")
    connection.connection = FailingClose(connection.connection, error)
    with pytest.warns(CloseErrorWarning, match="InterfaceError: connection already closed") as caught:
        connection.close()  # the warning points here, not into Django
    assert caught[0].filename == __file__
    assert connection.connection is None
    [event] = named(captured, "connection_close_failed")
    assert event["error_type"] == "InterfaceError"
    assert event["error"] == "connection already closed"
    assert event["log_level"] == "warning"
    assert conntrace.history()[-1]["closes"][-1]["outcome"] == "failed"
    open_and_query()  # reconnects


def test_close_error_propagates_when_downgrade_is_off(settings):
    settings.CONNTRACE = {"DOWNGRADE_CLOSE_ERRORS": False}
    connection.close()
    open_and_query()
    error = connection.Database.InterfaceError("boom")
    connection.connection = FailingClose(connection.connection, error)
    from django.db import InterfaceError

    with pytest.raises(InterfaceError, match="boom"):
        connection.close()
    assert conntrace.history()[-1]["closes"][-1]["outcome"] == "failed"


def test_close_error_warning_is_a_user_warning_so_runners_do_not_escalate_it():
    assert issubclass(CloseErrorWarning, UserWarning)
    assert not issubclass(CloseErrorWarning, RuntimeWarning)


def test_errors_outside_closing_are_never_swallowed():
    connection.close()
    with pytest.raises(Exception, match="syntax error"), connection.cursor() as cursor:
        cursor.execute("SELEC 1")


def test_close_inside_atomic_is_recorded_and_the_next_close_is_a_noop():
    connection.close()
    from django.db import OperationalError

    with pytest.raises(OperationalError, match="closed"), transaction.atomic():
        open_and_query()
        connection.close()  # only marks the connection inside the block
        connection.close()
        open_and_query()  # the driver refuses: the connection was closed in the transaction
    record = conntrace.history()[-1]
    assert [c["outcome"] for c in record["closes"]] == ["closed", "noop"]
    open_and_query()


def test_pooled_close_returns_to_pool():
    from django.db.backends.postgresql.base import DatabaseWrapper

    pooled = DatabaseWrapper(
        {**connections["default"].settings_dict, "OPTIONS": {"pool": {"min_size": 1, "max_size": 2}}},
        alias="pooled",
    )
    try:
        with pooled.cursor() as cursor:
            cursor.execute("SELECT 1")
        pooled.close()
        record = conntrace.history()[-1]
        assert record["alias"] == "pooled"
        assert record["pooled"] is True
        assert record["closes"][-1]["outcome"] == "returned_to_pool"
    finally:
        pooled.close_pool()


def test_install_twice_does_not_stack_wrappers_and_uninstall_restores_django():
    conntrace.install()
    conntrace.install()
    wrapped = BaseDatabaseWrapper.__dict__["connect"]
    assert getattr(wrapped, instrument.MARK).__qualname__ == "BaseDatabaseWrapper.connect"
    assert not hasattr(getattr(wrapped, instrument.MARK), instrument.MARK)
    conntrace.uninstall()
    for name in ("connect", "close", "_cursor"):
        assert not hasattr(BaseDatabaseWrapper.__dict__[name], instrument.MARK)
    assert not conntrace.is_installed()
    connection.close()
    open_and_query()
    assert conntrace.live() == []


def test_ready_running_again_keeps_one_layer_of_wrappers():
    from django.apps import apps

    apps.get_app_config("conntrace").ready()
    apps.get_app_config("conntrace").ready()
    original = getattr(BaseDatabaseWrapper.__dict__["close"], instrument.MARK)
    assert not hasattr(original, instrument.MARK)


def test_disabled_by_setting_leaves_django_untouched(settings):
    settings.CONNTRACE = {"ENABLED": False}
    assert not conntrace.is_installed()
    assert not hasattr(BaseDatabaseWrapper.__dict__["connect"], instrument.MARK)
    settings.CONNTRACE = {"ENABLED": True}
    assert conntrace.is_installed()


def test_a_failure_inside_conntrace_never_breaks_the_query(monkeypatch, captured):
    """Fault injection: conntrace's own stack capture raises."""

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("conntrace bug")

    monkeypatch.setattr("conntrace.stacks.capture", broken)
    for _ in range(3):
        connection.close()
        open_and_query()
    errors = named(captured, "conntrace_internal_error")
    assert len(errors) == 2  # once for connect, once for close: not once per call
    assert {e["where"] for e in errors} == {"connect", "close"}


def test_no_extra_sql_on_connect(pg):
    """The server's statement log shows the same statements with and without conntrace."""

    def statements_of_one_cycle() -> list[str]:
        connection.close()
        open_and_query()
        pid = backend_pid()
        connection.close()
        import time

        time.sleep(0.3)
        from pathlib import Path

        log = Path(pg.root, "server.log").read_text().splitlines()
        return [
            line.split("statement: ", 1)[1] for line in log if f"[{pid}]" in line and "statement: " in line
        ]

    pg.psql("ALTER ROLE conntrace_app SET log_statement = 'all'")
    try:
        with_conntrace = statements_of_one_cycle()
        conntrace.uninstall()
        without = statements_of_one_cycle()
    finally:
        pg.psql("ALTER ROLE conntrace_app RESET log_statement")
    assert with_conntrace == without
    assert with_conntrace[-1] == "SELECT 1"


def test_request_id_bound_by_django_structlog_reaches_the_close_at_request_finished(
    settings, captured, conn_max_age
):
    """django-structlog clears its context before request_finished: conntrace remembers it."""
    from django.core.handlers.wsgi import WSGIHandler
    from django.test import RequestFactory

    settings.MIDDLEWARE = ["django_structlog.middlewares.RequestMiddleware"]
    conn_max_age(0)
    connection.close()
    environ = RequestFactory().get("/count/").environ
    handler = WSGIHandler()
    response = handler(environ, lambda status, headers: None)
    assert b"".join(response) == b"0"
    response.close()  # sends request_finished: Django's close_old_connections closes now
    import uuid

    import structlog

    assert structlog.contextvars.get_contextvars() == {}  # cleared by django-structlog already
    [opened] = [e for e in named(captured, "connection_opened") if e["alias"] == "default"]
    [closed] = [e for e in named(captured, "connection_closed") if e["alias"] == "default"]
    assert uuid.UUID(closed["request_id"])
    assert closed["request_id"] == opened["request_id"]
    assert conntrace.history()[-1]["request_id"] == closed["request_id"]


def test_a_celery_task_on_a_reused_connection_closes_with_its_own_task_id(captured):
    """Celery's task_prerun starts a unit of work as request_started does: its context is remembered."""
    import structlog
    from celery import signals

    conntrace.install()  # Celery is loaded now: conntrace listens to task_prerun
    connection.close()
    for task_id in ("task-1", "task-2"):  # two tasks on one persistent connection (CELERY_DB_REUSE_MAX)
        signals.task_prerun.send(sender=None, task_id=task_id, task=None, args=(), kwargs={})
        with structlog.contextvars.bound_contextvars(task_id=task_id):
            open_and_query()
    connection.close()
    [closed] = [e for e in named(captured, "connection_closed") if e["alias"] == "default"]
    assert closed["task_id"] == "task-2"


def test_events_never_contain_the_password(captured):
    from tests import pgserver

    connection.close()
    open_and_query()
    connection.connection = FailingClose(
        connection.connection,
        connection.Database.OperationalError(f"password={pgserver.APP_PASSWORD} rejected"),
    )
    with pytest.warns(CloseErrorWarning) as caught:
        connection.close()
    open_and_query()
    connection.connection.close()
    connection.close()
    text = repr(captured) + repr(conntrace.history()) + repr(conntrace.live()) + str(caught[0].message)
    assert pgserver.APP_PASSWORD not in text
    assert "***" in text


def test_internal_errors_are_reported_once_per_kind(captured):
    for _ in range(5):
        events.internal_error("emit", ValueError("x"))
    events.internal_error("emit", KeyError("y"))
    assert len(named(captured, "conntrace_internal_error")) == 2
    assert process.active


def test_no_warning_at_all_for_a_clean_application(captured, conn_max_age):
    """Open, query, close, close_all, and a persistent connection reused across requests."""
    from django.core.handlers.wsgi import WSGIHandler
    from django.test import RequestFactory

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        connection.close()
        open_and_query()
        connection.close()
        connections.close_all()
        conn_max_age(60)
        handler = WSGIHandler()
        for _ in range(3):
            response = handler(RequestFactory().get("/count/").environ, lambda s, h: None)
            response.close()
        connections.close_all()
    assert [e for e in captured if e["log_level"] not in ("debug", "info")] == []
    opened = [e for e in named(captured, "connection_opened") if e["alias"] == "default"]
    assert len(opened) == 2  # one before the requests, one reused by all three requests


def test_install_does_not_add_a_layer_over_a_foreign_wrapper_of_ours():
    """Django's SimpleTestCase (and libraries such as Sentry) wrap the method conntrace wrapped."""
    ours = BaseDatabaseWrapper.__dict__["connect"]

    def foreign(self):
        return ours(self)

    BaseDatabaseWrapper.connect = foreign
    try:
        conntrace.uninstall()
        assert not conntrace.is_installed()
        conntrace.install()
        assert BaseDatabaseWrapper.__dict__["connect"] is foreign
        connection.close()
        open_and_query()
        assert [r["alias"] for r in conntrace.live()] == ["default"]
    finally:
        BaseDatabaseWrapper.connect = ours
