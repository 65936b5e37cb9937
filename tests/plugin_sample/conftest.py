"""Threads a sample test leaves holding a connection are let go once the tests are done."""

import threading

import pytest

release = threading.Event()
held: list[threading.Thread] = []


@pytest.fixture(scope="session", autouse=True)
def let_held_threads_go(django_db_setup, django_db_blocker):
    yield
    release.set()
    for thread in held:
        thread.join(5)
