"""Who killed it: every lost session is one ``connection_lost`` with its cause, seen at the failing query.

Each cause is the real thing on a real PostgreSQL (and pgbouncer): a backend
terminated, the server restarted, its session timeouts, a pooler, a forked
child, the application closing the driver connection. Each request goes
through Django's WSGI handler as a server serves it, and the application's
exception is compared with the one the same fault gives without conntrace.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import got_request_exception
from django.db import connection, connections, transaction
from django.http import HttpRequest, HttpResponse
from django.urls import path

import conntrace
from conntrace import instrument
from tests import pgserver
from tests.app.models import Setting
from tests.conftest import named
from tests.pgbouncer import PgBouncer
from tests.test_faults import bouncer, db_settings, get, restartable, through_bouncer, wait_gone
from tests.wsgi import production_site

__all__ = ["bouncer", "db_settings", "restartable", "through_bouncer"]  # fixtures used here

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True, databases=["default", "other", "lite"]),
]

# --------------------------------------------------------------------------- the views


def count(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(Setting.objects.count()))


def both(request: HttpRequest) -> HttpResponse:
    with connections["other"].cursor() as cursor:
        cursor.execute("SELECT 1")
    return HttpResponse(str(Setting.objects.count()))


def close_driver(request: HttpRequest) -> HttpResponse:
    connection.ensure_connection()
    connection.connection.close()  # the driver connection, behind Django's back
    if request.GET.get("then") == "query":
        Setting.objects.count()
    return HttpResponse("closed")


def sleep_in_atomic(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute("SET idle_in_transaction_session_timeout = '1s'")
    with transaction.atomic():
        Setting.objects.count()
        time.sleep(2)
        Setting.objects.count()
    return HttpResponse("done")


def count_lite(request: HttpRequest) -> HttpResponse:
    lite = connections["lite"]
    lite.ensure_connection()
    lite.connection.close()
    with lite.cursor() as cursor:
        cursor.execute("SELECT 1")
    return HttpResponse("done")


urlpatterns = [
    path("count/", count),
    path("both/", both),
    path("close-driver/", close_driver),
    path("sleep-in-atomic/", sleep_in_atomic),
    path("lite/", count_lite),
]
ATOMIC_LINE = f"tests/test_losses.py:{sleep_in_atomic.__code__.co_firstlineno + 3} in sleep_in_atomic"
VIEW_CLOSE_LINE = f"tests/test_losses.py:{close_driver.__code__.co_firstlineno + 2} in close_driver"
NAME = "close_driver"
COUNT_LINE = f"tests/test_losses.py:{count.__code__.co_firstlineno + 1} in count"


@pytest.fixture
def uses_watched() -> Iterator[None]:
    """Watch uses as a debugging tool (the toolbar panel) does: last_used_in is kept only then."""

    def observe(kind: Any, wrapper: Any, record: Any) -> None:
        pass

    instrument.add_observer(observe)
    yield
    instrument.remove_observer(observe)


@pytest.fixture
def site(settings) -> WSGIHandler:
    """Give a WSGI handler for this module's views (errors become 500 responses, as in production)."""
    return production_site(settings, __name__)


@pytest.fixture
def raised() -> Iterator[list[tuple[str, str]]]:
    """Give the (type, message) of every exception a view raised, as Django's handler saw it."""
    seen: list[tuple[str, str]] = []

    def on_exception(sender: Any, request: Any = None, **kwargs: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        seen.append((f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc)))

    got_request_exception.connect(on_exception, dispatch_uid="test_losses")
    yield seen
    got_request_exception.disconnect(dispatch_uid="test_losses")


def lost(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return named(logs, "connection_lost")


def backend_pid(alias: str = "default") -> int:
    """Return the server's pid for ``alias``'s session, read from the driver (psycopg 3 or psycopg2)."""
    driver_connection = connections[alias].connection
    if hasattr(driver_connection, "info"):
        return driver_connection.info.backend_pid
    return driver_connection.get_backend_pid()


def terminate(pg: pgserver.PostgresServer, alias: str = "default") -> int:
    killed = backend_pid(alias)
    pg.psql(f"SELECT pg_terminate_backend({killed})")
    wait_gone(pg, killed)
    return killed


def without_conntrace(scenario: Any) -> Any:
    """Run ``scenario`` with conntrace uninstalled (the application's exception, for comparison)."""
    connections.close_all()
    conntrace.uninstall()
    try:
        return scenario()
    finally:
        connections.close_all()
        conntrace.install()


def same_as_without_conntrace(scenario: Any, raised: list[Any], captured: list[Any]) -> list[int]:
    """Run ``scenario`` without, then with conntrace: same statuses, same exceptions; give the statuses."""
    plain = without_conntrace(scenario)
    expected = raised[:]
    raised.clear()
    captured.clear()
    statuses = scenario()
    assert statuses == plain
    assert raised == expected  # the application's exception is the one it gets without conntrace
    return statuses


def said(event: dict[str, Any]) -> str:
    """Return what the driver said: the error, and libpq's own message where psycopg2 kept it apart."""
    return f"{event['error']}\n{event.get('server_message', '')}"


# --------------------------------------------------------------------------- the server ends it


@pytest.mark.drivers
def test_a_backend_terminated_by_an_admin_is_lost_at_the_next_request(
    site, db_settings, pg, captured, raised, uses_watched
):
    db_settings(60)
    killed: list[int] = []

    def scenario() -> list[int]:
        statuses = [get(site)]
        killed.append(terminate(pg))
        return [*statuses, get(site), get(site)]

    assert same_as_without_conntrace(scenario, raised, captured) == [200, 500, 200]
    [event] = lost(captured)
    assert event["log_level"] == "warning"
    assert (event["cause"], event["sqlstate"], event["backend_pid"]) == (
        "terminated_by_admin",
        "57P01",
        killed[-1],
    )
    assert "no other session" in event["cause_evidence"]
    assert "terminating connection due to administrator command" in said(event)
    assert event["failed_in"] == event["last_used_in"] == COUNT_LINE
    assert event["idle_s"] >= 0 and event["age_s"] >= event["idle_s"]
    assert event["transaction_started_in"] is None
    # Django's close at the end of that request is the expected end: no second warning.
    [closed] = named(captured, "connection_double_close")
    assert (closed["log_level"], closed["cause"]) == ("info", "terminated_by_admin")


@pytest.mark.drivers
@pytest.mark.parametrize("health_checks", [False, True], ids=["no_health_checks", "health_checks"])
def test_a_fast_restart_is_a_server_shutdown_for_every_persistent_session(
    site, db_settings, restartable, captured, raised, health_checks, conn_max_age
):
    """Two persistent sessions to one server ("default" and "other"): the first error sees both ended."""
    db_settings(60, health_checks)
    conn_max_age(60, "other")
    connections["other"].settings_dict["CONN_HEALTH_CHECKS"] = health_checks
    try:
        assert get(site, "/both/") == 200
        before = {alias: backend_pid(alias) for alias in ("default", "other")}
        restartable.restart()
        pgserver.wait_ready()
        statuses = [get(site, "/count/"), get(site, "/both/"), get(site, "/both/")]
    finally:
        connections["other"].settings_dict["CONN_HEALTH_CHECKS"] = False
    if health_checks:
        assert statuses == [200, 200, 200]  # Django reconnected silently
        assert lost(captured) == []
        assert {e["alias"] for e in named(captured, "connection_opened")} >= {"default", "other"}
        return
    # "other" is first used by the second request, after "default" saw the shutdown.
    assert statuses == [500, 500, 200]
    events = lost(captured)
    assert [(e["alias"], e["cause"], e["sqlstate"]) for e in events] == [
        ("default", "server_shutdown", "57P01"),
        ("other", "server_shutdown", "57P01"),
    ]
    assert [e["backend_pid"] for e in events] == [before["default"], before["other"]]
    assert "other sessions there ended too: other" in events[0]["cause_evidence"]
    assert "a shutdown of the server seen" in events[1]["cause_evidence"]
    assert len(raised) == 2


@pytest.mark.drivers
@pytest.mark.parametrize("watched", [True, False], ids=["uses_watched", "in_production"])
def test_an_idle_session_timeout_names_the_last_use(watched, site, db_settings, captured, raised, request):
    if watched:
        request.getfixturevalue("uses_watched")
    db_settings(60)
    assert get(site) == 200
    with connection.cursor() as cursor:
        cursor.execute("SET idle_session_timeout = '1s'")
    time.sleep(2)
    assert get(site) == 500
    [event] = lost(captured)
    assert (event["cause"], event["sqlstate"]) == ("idle_session_timeout", "57P05")
    assert event["idle_s"] >= 2
    # The time is kept at every new cursor; the line once per request, while uses are watched.
    assert event["last_used_in"] == (COUNT_LINE if watched else None)
    assert event["failed_in"] == COUNT_LINE


@pytest.mark.drivers
def test_an_idle_in_transaction_timeout_names_the_atomic_block(site, db_settings, captured, raised):
    db_settings(60)
    assert same_as_without_conntrace(lambda: [get(site, "/sleep-in-atomic/")], raised, captured) == [500]
    [event] = lost(captured)
    assert (event["cause"], event["sqlstate"]) == ("idle_in_transaction_timeout", "25P03")
    assert event["transaction_started_in"] == ATOMIC_LINE
    assert event["idle_s"] >= 1.5
    assert "terminating connection due to idle-in-transaction timeout" in said(event)


# --------------------------------------------------------------------------- the application or a sibling


@pytest.mark.drivers
def test_a_driver_connection_closed_in_a_view_then_used_is_closed_by_application(
    site, db_settings, captured, raised, uses_watched
):
    db_settings(60)

    def scenario() -> list[int]:
        return [get(site), get(site, "/close-driver/?then=query"), get(site)]

    assert same_as_without_conntrace(scenario, raised, captured) == [200, 500, 200]
    [event] = lost(captured)
    assert (event["cause"], event["sqlstate"]) == ("closed_by_application", None)
    assert (
        event["failed_in"]
        == f"tests/test_losses.py:{close_driver.__code__.co_firstlineno + 4} in close_driver"
    )
    assert event["last_used_in"] == COUNT_LINE  # the previous request's query
    if "driver_closed_in" in event:  # psycopg 3: named
        assert event["driver_closed_in"] == VIEW_CLOSE_LINE
    else:  # psycopg2: bounded by the last use and this error
        between = event["driver_closed_between"]
        assert between.startswith("closed outside Django's wrapper between its last use at ")
        assert f"first using it in {COUNT_LINE}) and this error in {event['failed_in']} at " in between


@pytest.mark.drivers
def test_a_double_close_names_the_direct_close_and_counts_two_closes(site, db_settings, captured):
    db_settings(0)
    assert get(site, "/close-driver/") == 200
    [event] = named(captured, "connection_double_close")
    assert event["log_level"] == "warning"
    if "driver_closed_in" in event:  # psycopg 3
        assert event["driver_closed_in"] == VIEW_CLOSE_LINE
        assert event["close_count"] == 2
        assert [(c["outcome"], c["closed_by"], c["closed_in"]) for c in event["closes"]] == [
            ("closed", "application", VIEW_CLOSE_LINE),
            ("already_closed", "application", event["closes"][1]["closed_in"]),
        ]
    else:  # psycopg2: a C method, bounded by the last use
        assert event["close_count"] == 1
        assert event["driver_closed_between"].startswith("closed outside Django's wrapper between ")
    assert lost(captured) == []


@pytest.mark.drivers
def test_a_forked_child_closing_the_shared_session_is_a_forked_sibling(
    site, db_settings, settings, captured, raised
):
    settings.CONNTRACE = {**settings.CONNTRACE, "FORK_POLICY": "warn"}
    db_settings(60)
    assert get(site) == 200
    child = os.fork()
    if child == 0:
        try:
            connection.close()  # under "warn", Django's close in the child ends the shared session
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    time.sleep(0.2)
    assert get(site) == 500
    [event] = lost(captured)
    assert event["cause"] == "forked_sibling"
    assert event["open_at_forks"] == 1
    assert "a child process shares its socket" in event["cause_evidence"]


def test_sqlite_closed_database_is_closed_by_application(site, captured, raised):
    assert get(site, "/lite/") == 500
    [event] = lost(captured)
    assert (event["alias"], event["cause"]) == ("lite", "closed_by_application")
    assert "closed database" in event["error"]


# --------------------------------------------------------------------------- pgbouncer


@pytest.fixture
def bounced(through_bouncer) -> Iterator[Any]:
    """Give pgbouncer in front of the default alias; this thread's connections to it closed afterwards."""
    yield through_bouncer
    connections.close_all()


class IdleTimeoutBouncer(PgBouncer):
    """pgbouncer that ends a client's session after one idle second, in its own words.

    Transaction pooling: pgbouncer times out only clients that hold no server
    connection, and under session pooling a client holds one all along.
    """

    def __init__(self) -> None:
        super().__init__(pool_mode="transaction")

    def _write_config(self) -> str:
        ini = super()._write_config()
        with open(ini, "a") as f:
            f.write("client_idle_timeout = 1\n")
        return ini


@pytest.mark.drivers
def test_pgbouncer_killed_and_restarted_is_the_network_as_the_client_sees_it(
    site, db_settings, bounced, captured, raised
):
    """A killed pooler sends nothing: the client reads end-of-file, with no SQLSTATE and no message."""
    db_settings(60)
    assert get(site) == 200
    bounced.proc.kill()
    bounced.proc.wait()
    bounced.start()
    assert [get(site), get(site)] == [500, 200]
    [event] = lost(captured)
    assert (event["cause"], event["sqlstate"]) == ("network", None)
    assert "server closed the connection unexpectedly" in event["error"]


@pytest.mark.drivers
def test_a_pgbouncer_client_idle_timeout_is_the_pooler(site, db_settings, captured, raised):
    db_settings(60)
    shared = connections["default"].settings_dict
    saved = {key: shared[key] for key in ("HOST", "PORT")}
    with IdleTimeoutBouncer() as bouncer:
        shared.update(HOST=bouncer.host, PORT=str(bouncer.port))
        try:
            assert get(site) == 200
            time.sleep(2.5)  # pgbouncer checks its timeouts about once a second
            assert [get(site), get(site)] == [500, 200]
        finally:
            connections.close_all()
            shared.update(saved)
    [event] = lost(captured)
    assert event["cause"] == "pooler"
    assert "client_idle_timeout" in event["cause_evidence"]


# --------------------------------------------------------------------------- healthy


@pytest.mark.drivers
def test_a_healthy_run_and_ordinary_errors_give_no_connection_lost(site, db_settings, captured):
    db_settings(60)
    for _ in range(3):
        assert get(site, "/both/") == 200
    from django.db import ProgrammingError

    with pytest.raises(ProgrammingError), connection.cursor() as cursor:
        cursor.execute("SELECT * FROM no_such_table")
    assert get(site) == 200
    assert lost(captured) == []


def test_install_twice_adds_no_layer_and_uninstall_restores_django_and_psycopg_exactly():
    import psycopg
    from django.db.backends.base.base import BaseDatabaseWrapper

    originals = (psycopg.Connection.close, BaseDatabaseWrapper.set_autocommit)
    conntrace.install()
    assert (psycopg.Connection.close, BaseDatabaseWrapper.set_autocommit) == originals
    assert isinstance(BaseDatabaseWrapper.__dict__["errors_occurred"], property)
    connection.errors_occurred = True  # kept in the wrapper's own __dict__, where Django keeps it
    conntrace.uninstall()
    try:
        assert "errors_occurred" not in BaseDatabaseWrapper.__dict__
        assert connection.errors_occurred is True
        connection.errors_occurred = False
        restored = (psycopg.Connection.close, BaseDatabaseWrapper.set_autocommit)
        assert restored == (originals[0]._conntrace_original, originals[1]._conntrace_original)
        assert not hasattr(restored[0], "_conntrace_original")
        assert not hasattr(restored[1], "_conntrace_original")
    finally:
        conntrace.install()
    assert connection.errors_occurred is False
