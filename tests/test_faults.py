"""Faults: the server ends sessions, restarts, the logging pipeline breaks.

Every scenario checks the same three things: nothing is raised from a close,
the application recovers on the next request, and the fault is reported
(a ``connection_double_close`` with ``closed_by: "server"``, or conntrace's
own ``conntrace_internal_error`` once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from django.core.handlers.wsgi import WSGIHandler
from django.db import connection, connections
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory
from django.urls import path

import conntrace
from conntrace import events
from tests import pgserver
from tests.app.models import Setting
from tests.conftest import named
from tests.faults import FailingClose
from tests.pgbouncer import PgBouncer
from tests.wsgi import production_site

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


# --------------------------------------------------------------------------- a tiny site


def count(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(Setting.objects.count()))


def slow(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(10)")
    return HttpResponse("slept")


urlpatterns = [path("count/", count), path("slow/", slow)]


def get(handler: WSGIHandler, url: str = "/count/") -> int:
    """Serve one request as a WSGI server would, closing the response (request_finished)."""
    status: list[str] = []
    response = handler(RequestFactory().get(url).environ, lambda s, headers: status.append(s))
    b"".join(response)
    response.close()  # request_finished: Django's close_old_connections runs here
    return int(status[0].split()[0])


@pytest.fixture
def site(settings) -> WSGIHandler:
    """Give a WSGI handler for this module's views (errors become 500 responses, as in production)."""
    return production_site(settings, __name__)


@pytest.fixture
def db_settings() -> Iterator[Any]:
    """Give a setter for the default alias's CONN_MAX_AGE and CONN_HEALTH_CHECKS, restored afterwards."""
    shared = connections["default"].settings_dict  # shared by every thread's wrapper
    saved = {key: shared[key] for key in ("CONN_MAX_AGE", "CONN_HEALTH_CHECKS")}

    def set_(max_age: Any, health_checks: bool = False) -> None:
        shared["CONN_MAX_AGE"] = max_age
        shared["CONN_HEALTH_CHECKS"] = health_checks

    yield set_
    shared.update(saved)


def backend_pid() -> int:
    [record] = [r for r in conntrace.live() if r["alias"] == "default"]
    return record["backend_pid"]


def wait_gone(pg: pgserver.PostgresServer, pid: int) -> None:
    """Wait until the server no longer lists backend ``pid``."""
    for _ in range(100):
        if pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}").strip() == "0":
            return
        time.sleep(0.05)
    raise AssertionError(f"backend {pid} still there")


def server_closes(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in named(logs, "connection_double_close") if e["alias"] == "default"]


# --------------------------------------------------------------------------- the server ends the session


@pytest.mark.drivers
@pytest.mark.parametrize("health_checks", [False, True], ids=["no_health_checks", "health_checks"])
def test_session_terminated_between_requests(site, db_settings, pg, captured, caplog, health_checks):
    db_settings(60, health_checks)
    assert get(site) == 200
    killed = backend_pid()
    pg.psql(f"SELECT pg_terminate_backend({killed})")
    wait_gone(pg, killed)
    statuses = [get(site), get(site)]
    # Without health checks Django finds out on the request's query (a 500); with them, before it.
    assert statuses == ([200, 200] if health_checks else [500, 200])
    [event] = server_closes(captured)
    assert event["closed_by"] == "server"
    assert event["backend_pid"] == killed
    assert event["closes"][-1]["outcome"] == "already_closed"
    assert backend_pid() != killed  # the application reconnected
    assert not named(captured, "conntrace_internal_error")


@pytest.mark.drivers
def test_session_terminated_during_a_request(site, db_settings, pg, captured, caplog):
    db_settings(0)
    assert get(site) == 200

    def kill_the_sleeper() -> None:
        for _ in range(200):
            pids = pg.psql("SELECT pid FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(10)'").split()
            if pids:
                pg.psql(f"SELECT pg_terminate_backend({pids[0]})")
                killed.append(int(pids[0]))
                return
            time.sleep(0.02)

    killed: list[int] = []
    killer = threading.Thread(target=kill_the_sleeper)
    killer.start()
    started = time.monotonic()
    assert get(site, "/slow/") == 500
    killer.join()
    assert time.monotonic() - started < 5  # the query was cut short, not finished
    assert get(site) == 200
    [event] = server_closes(captured)
    assert event["closed_by"] == "server"
    assert [event["backend_pid"]] == killed
    assert event["closes"][-1]["outcome"] == "already_closed"
    assert connections["default"].connection is None  # closed at request end (CONN_MAX_AGE 0)


# --------------------------------------------------------------------------- the server restarts


@pytest.fixture
def restartable(pg) -> Iterator[pgserver.PostgresServer]:
    """Give the server to restart; afterwards wait until it is ready and drop this thread's connections."""
    yield pg
    pgserver.wait_ready()
    connections.close_all()


@pytest.mark.drivers
@pytest.mark.parametrize("health_checks", [False, True], ids=["no_health_checks", "health_checks"])
def test_server_restart_with_persistent_connections(
    site, db_settings, restartable, captured, caplog, health_checks
):
    db_settings(60, health_checks)
    assert get(site) == 200
    before = backend_pid()
    restartable.restart()
    pgserver.wait_ready()
    statuses = [get(site), get(site)]
    assert statuses == ([200, 200] if health_checks else [500, 200])
    [event] = server_closes(captured)
    assert event["closed_by"] == "server"
    assert event["backend_pid"] == before
    assert backend_pid() != before
    assert not named(captured, "conntrace_internal_error")


# --------------------------------------------------------------------------- the logging pipeline fails


@pytest.fixture
def own_structlog() -> Iterator[None]:
    """Let the test configure structlog as an application would; restore the configuration afterwards."""
    was_configured = structlog.is_configured()
    saved = structlog.get_config()
    yield
    structlog.reset_defaults()
    if was_configured:
        structlog.configure(**saved)
    events.reset()


def cycles(n: int) -> None:
    for _ in range(n):
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
    connection.close()


def test_a_broken_structlog_processor_never_breaks_a_query_and_is_reported_once(own_structlog, caplog):
    def broken(logger: Any, method: str, event_dict: dict[str, Any]) -> Any:
        raise RuntimeError("processor bug")

    structlog.configure(
        processors=[broken], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)
    )
    caplog.set_level(logging.ERROR, logger="conntrace")
    cycles(20)  # 40 events, each one raising inside structlog
    reports = [r for r in caplog.records if "conntrace_internal_error" in r.getMessage()]
    assert len(reports) == 1
    assert "where=emit error_type=RuntimeError error=processor bug" in reports[0].getMessage()


class DiskFullHandler(logging.Handler):
    """A handler whose emit() raises instead of calling handleError(), as some third-party handlers do.

    A real fault (a log file on a full disk, /dev/full) is swallowed by the standard
    library's handlers and never reaches conntrace; this is the kind that does.
    """

    def emit(self, record: logging.LogRecord) -> None:
        raise OSError(28, "No space left on device")


@pytest.fixture
def stdlib_structlog(own_structlog) -> Iterator[logging.Logger]:
    """Configure structlog over the standard library, as django-structlog does; give conntrace's logger."""
    structlog.configure(
        processors=[structlog.stdlib.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    logger = logging.getLogger("conntrace")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger
    logger.setLevel(saved[0])
    logger.propagate = saved[1]
    logger.handlers[:] = saved[2]


def test_a_log_handler_that_raises_never_breaks_a_query_and_is_reported_once(stdlib_structlog, capfd):
    stdlib_structlog.addHandler(DiskFullHandler())
    cycles(20)
    err = capfd.readouterr().err
    reports = [line for line in err.splitlines() if "conntrace_internal_error" in line]
    assert reports == [
        "conntrace_internal_error where=emit error_type=OSError error=[Errno 28] No space left on device"
    ]


def test_a_log_file_on_a_full_disk_never_breaks_a_query(stdlib_structlog, capfd):
    """A real fault: every write to /dev/full fails with ENOSPC; logging reports it, queries go on."""
    handler = logging.FileHandler("/dev/full")
    stdlib_structlog.addHandler(handler)
    try:
        cycles(5)
    finally:
        stdlib_structlog.removeHandler(handler)
        try:
            handler.close()
        except OSError:
            pass  # flushing to /dev/full fails once more
    err = capfd.readouterr().err
    assert "No space left on device" in err  # the standard library's own report of each failed write


# --------------------------------------------------------------------------- pgbouncer dies and comes back

WORKERS = 4


@pytest.fixture
def bouncer() -> Iterator[PgBouncer]:
    """Give a real pgbouncer (session pooling, SCRAM) in front of the test server, stopped afterwards."""
    with PgBouncer(pool_mode="session") as running:
        yield running


@pytest.fixture
def through_bouncer(bouncer, db_settings) -> Iterator[PgBouncer]:
    """Point the default alias at pgbouncer's own port for every thread, as in the original bug report."""
    shared = connections["default"].settings_dict
    saved = {key: shared[key] for key in ("HOST", "PORT")}
    shared.update(HOST=bouncer.host, PORT=str(bouncer.port))
    yield bouncer
    shared.update(saved)


@pytest.mark.drivers
@pytest.mark.parametrize("health_checks", [False, True], ids=["no_health_checks", "health_checks"])
def test_pgbouncer_killed_and_restarted_while_workers_hold_connections(
    site, db_settings, through_bouncer, captured, caplog, health_checks
):
    db_settings(60, health_checks)
    held, restarted = threading.Barrier(WORKERS + 1), threading.Barrier(WORKERS + 1)
    statuses: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def worker() -> None:
        name = threading.current_thread().name
        try:
            statuses[name] = [get(site)]
            held.wait(30)  # holding a persistent connection through pgbouncer
            restarted.wait(30)
            statuses[name] += [get(site), get(site)]
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, name=f"worker-{i}") for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    held.wait(30)
    through_bouncer.proc.kill()  # SIGKILL: every client socket is cut at once
    through_bouncer.proc.wait()
    through_bouncer.start()  # same port, same configuration
    restarted.wait(30)
    for thread in threads:
        thread.join()

    assert errors == []
    # Without health checks the first request after the restart fails on its query (500) and the next one
    # reconnects; with them Django notices before the query.
    expected = [200, 200, 200] if health_checks else [200, 500, 200]
    assert statuses == {f"worker-{i}": expected for i in range(WORKERS)}
    reports = server_closes(captured)
    assert sorted(e["thread"] for e in reports) == sorted(statuses)  # one report per worker
    assert {e["closed_by"] for e in reports} == {"server"}
    assert {e["closes"][-1]["outcome"] for e in reports} == {"already_closed"}
    assert not named(captured, "conntrace_internal_error")
    database = connections["default"].settings_dict["NAME"]
    logins = through_bouncer.log().count(f"login attempt: db={database} user={pgserver.APP_USER}")
    assert logins == 2 * WORKERS  # really through pgbouncer: once before the kill, once after


# --------------------------------------------------------------------------- an unprintable close error


class Unprintable(Exception):
    """An exception whose ``str()`` raises, as some C extensions' errors can."""

    def __str__(self) -> str:
        raise ValueError("no message")


def test_a_close_error_that_cannot_be_printed_is_still_downgraded(captured):
    connection.ensure_connection()
    connection.connection = FailingClose(connection.connection, Unprintable())
    with pytest.warns(conntrace.CloseErrorWarning, match="raised Unprintable: <unprintable Unprintable>"):
        connection.close()
    assert connection.connection is None
    [event] = named(captured, "connection_close_failed")
    assert (event["error_type"], event["error"]) == ("Unprintable", "<unprintable Unprintable>")
    cycles(1)  # the next use reconnects
