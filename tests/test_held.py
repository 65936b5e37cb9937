"""Held connections: ``connection_held_long`` arrives while the holder still holds, naming its lines.

A real PostgreSQL session, a thread that takes it in ``atomic()`` (or
``set_autocommit(False)``) and blocks: the watchdog thread, started by the
first connect, reports it once, with the ``atomic()`` line, while the holder
still sleeps. The thresholds are lowered to fractions of a second so that the
suite stays fast; the watchdog and the records are the production ones.
Exiting with a blocked holder (parent and forked child) is in
``test_held_exit.py``; ASGI in ``test_e2e_uvicorn_persistent.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.db.backends.signals import connection_created

import conntrace
from conntrace import watchdog
from tests.app.models import Setting
from tests.conftest import named

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

FAST = {"WATCHDOG_INTERVAL_S": 0.05, "HELD_WARN_S": 60, "IDLE_IN_TRANSACTION_WARN_S": 0.5}
WAIT_S = 10  # for an event the watchdog sends within a fraction of a second


def line(function: Callable[..., Any], offset: int) -> str:
    """Return ``opened_in``-style text for the line ``offset`` lines below ``function``'s ``def``."""
    code = function.__code__
    return f"tests/test_held.py:{code.co_firstlineno + offset} in {code.co_qualname}"


def held_events(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return named(logs, "connection_held_long")


def wait_for(condition: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Return ``condition()`` once true, or its last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


class Holder:
    """A thread that runs ``body(release)`` and closes its connections after; joined by ``stop()``."""

    def __init__(self, body: Callable[[threading.Event], None], name: str = "holder") -> None:
        self.release = threading.Event()
        self.errors: list[BaseException] = []

        def run() -> None:
            try:
                body(self.release)
            except BaseException as exc:
                self.errors.append(exc)
            finally:
                connections.close_all()

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive()
        assert self.errors == []


@pytest.fixture
def holding() -> Iterator[Callable[..., Holder]]:
    """Give a starter of ``Holder`` threads, each released and joined after the test."""
    started: list[Holder] = []

    def start(body: Callable[[threading.Event], None], name: str = "holder") -> Holder:
        holder = Holder(body, name)
        started.append(holder)
        return holder

    yield start
    for holder in started:
        holder.stop()


def sleep_in_atomic(release: threading.Event) -> None:
    with connection.cursor() as cursor:  # a session-level timeout far longer than the warning's
        cursor.execute("SET idle_in_transaction_session_timeout = '60s'")
    with transaction.atomic():
        Setting.objects.count()
        release.wait()


ATOMIC_LINE = line(sleep_in_atomic, 3)
OPENED_LINE = line(sleep_in_atomic, 1)


def test_an_atomic_block_idle_past_the_threshold_is_reported_while_the_thread_still_sleeps(
    settings, captured, holding
):
    settings.CONNTRACE = {**settings.CONNTRACE, **FAST}
    holder = holding(sleep_in_atomic, name="export-1")
    [event] = wait_for(lambda: held_events(captured))
    assert holder.thread.is_alive() and not holder.release.is_set()  # still sleeping inside atomic()
    assert event["log_level"] == "warning"
    assert event["transaction_started_in"] == ATOMIC_LINE
    assert event["transaction_stack"][0] == ATOMIC_LINE
    assert event["opened_in"] == OPENED_LINE
    assert (event["thread"], event["thread_alive"], event["in_transaction"]) == ("export-1", True, True)
    assert event["idle_s"] >= 0.5 and event["held_s"] >= event["idle_s"]
    assert (event["alias"], event["pooled"]) == ("default", False)
    assert (event["held_warn_s"], event["idle_in_transaction_warn_s"]) == (60, 0.5)
    # live() says the same while it is held.
    [record] = [r for r in conntrace.live() if r["conn_id"] == event["conn_id"]]
    assert (record["transaction_started_in"], record["thread_alive"]) == (ATOMIC_LINE, True)
    assert record["idle_s"] >= 0.5
    time.sleep(0.3)  # several more looks of the watchdog: once per holding
    assert len(held_events(captured)) == 1


def busy_in_transaction(release: threading.Event) -> None:
    transaction.set_autocommit(False)
    try:
        while not release.wait(0.05):
            Setting.objects.count()  # a query every 50 ms: never idle, but held
    finally:
        transaction.rollback()
        transaction.set_autocommit(True)


def test_a_transaction_held_past_held_warn_s_is_reported_even_when_it_is_never_idle(
    settings, captured, holding
):
    settings.CONNTRACE = {**settings.CONNTRACE, **FAST, "HELD_WARN_S": 0.5}
    holder = holding(busy_in_transaction)
    [event] = wait_for(lambda: held_events(captured))
    assert holder.thread.is_alive()
    assert event["transaction_started_in"] == line(busy_in_transaction, 1)
    assert event["held_s"] >= 0.5 and event["idle_s"] < 0.5


def test_each_new_transaction_of_a_connection_is_a_new_holding(settings, captured):
    settings.CONNTRACE = {**settings.CONNTRACE, **FAST, "IDLE_IN_TRANSACTION_WARN_S": 0.2}
    Setting.objects.count()
    for holdings in (1, 2):
        with transaction.atomic():
            Setting.objects.count()
            assert wait_for(lambda: len(held_events(captured)) == holdings)  # noqa: B023
    time.sleep(0.2)
    assert len(held_events(captured)) == 2
    assert len({e["conn_id"] for e in held_events(captured)}) == 1


def test_nothing_is_reported_outside_a_transaction_or_under_the_thresholds(settings, captured):
    settings.CONNTRACE = {**settings.CONNTRACE, "WATCHDOG_INTERVAL_S": 0.05}  # default thresholds
    Setting.objects.count()
    time.sleep(0.3)  # open, idle, outside a transaction
    with transaction.atomic():
        Setting.objects.count()
        time.sleep(0.3)  # in a transaction, well under 10 s
    assert watchdog.running()
    assert held_events(captured) == []
    assert conntrace.live()[0]["transaction_started_in"] is None


def test_a_pool_checkout_held_past_held_warn_s_names_the_checkout_line(settings, captured, holding):
    settings.CONNTRACE = {**settings.CONNTRACE, **FAST, "HELD_WARN_S": 0.3}
    from django.db.backends.postgresql.base import DatabaseWrapper

    options = {**connections["default"].settings_dict["OPTIONS"], "pool": {"min_size": 1, "max_size": 2}}
    pooled = {**connections["default"].settings_dict, "OPTIONS": options}
    wrappers: list[Any] = []

    def check_out(release: threading.Event) -> None:
        wrappers.append(wrapper := DatabaseWrapper(pooled, alias="pooled_held"))
        wrapper.ensure_connection()  # the checkout
        release.wait()
        wrapper.close()

    holder = holding(check_out, name="pool-holder")
    try:
        [event] = wait_for(lambda: held_events(captured))
        assert holder.thread.is_alive()
        assert (event["alias"], event["pooled"], event["in_transaction"]) == ("pooled_held", True, False)
        assert event["opened_in"] == line(check_out, 2)
        assert event["transaction_started_in"] is None
        assert (event["thread"], event["thread_alive"]) == ("pool-holder", True)
    finally:
        holder.stop()
        wrappers[0].close_pool()


def test_interval_zero_turns_the_watchdog_off_and_install_cycles_start_no_new_thread(settings):
    Setting.objects.count()
    assert watchdog.running()
    [thread] = [t for t in threading.enumerate() if t.name == watchdog.THREAD_NAME]
    conntrace.uninstall()  # the thread sleeps on and reports nothing while uninstalled
    conntrace.install()
    connections.close_all()
    Setting.objects.count()
    assert [t for t in threading.enumerate() if t.name == watchdog.THREAD_NAME] == [thread]
    settings.CONNTRACE = {**settings.CONNTRACE, "WATCHDOG_INTERVAL_S": 0}
    assert not watchdog.running()
    assert [t for t in threading.enumerate() if t.name == watchdog.THREAD_NAME] == []


def test_the_watchdog_starts_once_and_then_leaves_the_connect_path_alone():
    connections.close_all()
    Setting.objects.count()
    assert watchdog.running()
    assert not connection_created.has_listeners(type(connection))


def test_a_healthy_load_with_the_watchdog_looking_often_emits_no_warning(settings, captured):
    """16 threads x 50 atomic blocks, each on a new session, while the watchdog looks every 10 ms."""
    settings.CONNTRACE = {**settings.CONNTRACE, "WATCHDOG_INTERVAL_S": 0.01}  # default thresholds
    deadline = time.monotonic() + 60

    def work() -> None:
        try:
            for _ in range(50):
                if time.monotonic() > deadline:
                    return
                with transaction.atomic():
                    Setting.objects.count()
                connection.close()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, name=f"load-{i}") for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert watchdog.running()
    assert [e for e in captured if e["log_level"] not in ("debug", "info")] == []
