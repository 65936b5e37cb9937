"""A record's life at its edges: ``connection_created`` receivers, and the garbage collector's callback.

Django sends ``connection_created`` from inside ``connect()``: a receiver that
closes or uses the new connection does so before conntrace's ``connect``
wrapper returns, so the record must already hang on the wrapper then.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections
from django.db.backends.signals import connection_created

import conntrace
from conntrace import lifecycle, process
from tests.conftest import named

pytestmark = [pytest.mark.django_db(transaction=True, databases=["default", "lite"])]


@pytest.fixture
def on_connection_created() -> Iterator[Any]:
    """Give a way to connect a ``connection_created`` receiver for the test's duration."""
    connected: list[Any] = []

    def add(receiver: Any) -> None:
        connection_created.connect(receiver, weak=False)
        connected.append(receiver)

    yield add
    for receiver in connected:
        connection_created.disconnect(receiver)


@pytest.mark.parametrize("alias", ["default", "lite"])
def test_a_connection_created_receiver_that_closes_the_new_session_ends_its_record(
    alias, on_connection_created, captured
):
    wrapper = connections[alias]
    wrapper.close()

    def close_it(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.alias == alias:
            connection.close()

    on_connection_created(close_it)
    wrapper.ensure_connection()
    record = lifecycle.record_of(wrapper)
    assert wrapper.connection is None
    assert [r for r in conntrace.live() if r["alias"] == alias] == []
    [ended] = [r for r in conntrace.history() if r["conn_id"] == record.conn_id]
    assert [c["outcome"] for c in ended["closes"]] == ["closed"]
    assert named(captured, "connection_abandoned") == []


def test_a_connection_created_receiver_that_queries_uses_the_new_record(on_connection_created, captured):
    wrapper = connections["lite"]
    wrapper.close()
    used: list[Any] = []

    def query(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.alias == "lite":
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            used.append(lifecycle.record_of(connection))

    on_connection_created(query)
    wrapper.ensure_connection()
    [live] = [r for r in conntrace.live() if r["alias"] == "lite"]
    assert used[0].conn_id == live["conn_id"]
    wrapper.close()
    assert named(captured, "connection_double_close") == []


def test_the_garbage_collectors_callback_reads_no_thread_local_state(monkeypatch, captured):
    """gevent finalises a greenlet's locals while collecting its objects: reading them there raises.

    Fault injection: the thread name (thread- or greenlet-local) cannot be read while
    the collector runs, as in a greenlet being finalised; the abandoned wrapper is
    still ended and reported, and nothing is left in live().
    """
    backend = type(connections["lite"])
    wrapper = backend(connections["lite"].settings_dict, alias="lite-gc")
    wrapper.ensure_connection()
    conn_id = lifecycle.record_of(wrapper).conn_id

    def finalised() -> str:
        raise RuntimeError("greenlet is being finalized")

    monkeypatch.setattr(process, "thread_name", finalised)
    del wrapper
    gc.collect()
    monkeypatch.undo()
    assert [r for r in conntrace.live() if r["conn_id"] == conn_id] == []  # also flushes the reports
    [event] = [e for e in named(captured, "connection_abandoned") if e["conn_id"] == conn_id]
    assert event["closes"][-1]["thread"] == "garbage collector"
    assert named(captured, "conntrace_internal_error") == []
