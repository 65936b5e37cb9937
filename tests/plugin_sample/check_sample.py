"""The sample suite: one test per connection problem, and clean tests (their names say which)."""

import threading

import pytest
from conftest import held, release
from django.db import connection

pytestmark = pytest.mark.django_db(transaction=True)


def query() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def in_thread(target) -> threading.Thread:
    thread = threading.Thread(target=target, name="sample-worker")
    thread.start()
    return thread


def test_clean_query_in_the_main_thread():
    query()
    print("driver:", type(connection.connection).__module__)


def test_clean_thread_closes_its_connection():
    def work() -> None:
        query()
        connection.close()

    in_thread(work).join()


def test_bad_thread_keeps_its_connection_open():
    opened = threading.Event()

    def hold() -> None:
        query()
        opened.set()
        release.wait(10)
        connection.close()

    held.append(in_thread(hold))
    assert opened.wait(10)


def test_bad_thread_ends_without_closing():
    in_thread(query).join()


def test_bad_double_close():
    connection.close()  # a session of its own, opened on the next line
    query()
    connection.connection.close()  # behind Django's back
    connection.close()


class FailingClose:
    """A driver connection whose close() closes the real one, then raises."""

    def __init__(self, real):
        self._real = real

    def close(self):
        self._real.close()
        raise RuntimeError("the driver failed to close")

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_bad_close_error():
    connection.close()
    query()
    connection.connection = FailingClose(connection.connection)
    with pytest.warns(UserWarning):
        connection.close()


def test_clean_uses_the_conntrace_fixture(conntrace):
    query()
    conntrace.assert_no_leaks()
    assert [e["observed"] for e in conntrace.events()][:1] in ([], ["opened"])
