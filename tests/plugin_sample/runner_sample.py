"""The sample suite for ``manage.py test`` with ``conntrace.test_runner.ConntraceRunner``.

The same problems as check_sample.py, as Django test cases: ``bad`` in a test's
name marks the ones the runner must find. ``ForkTests`` forks while the session
``sampleapp`` opened at startup is open: a finding of that test in a serial run;
with ``--parallel`` the runner's own forks came first (the worker's copy was
discarded), and the finding is the runner's.
"""

import os
import threading
import warnings

from check_sample import FailingClose, query
from django.db import connection
from django.test import TestCase, TransactionTestCase


class ThreadTests(TransactionTestCase):
    release = threading.Event()
    held: list[threading.Thread] = []

    @classmethod
    def tearDownClass(cls) -> None:
        cls.release.set()
        for thread in cls.held:
            thread.join(5)
        super().tearDownClass()

    def test_clean_thread_closes_its_connection(self):
        def work() -> None:
            query()
            connection.close()

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()

    def test_bad_thread_keeps_its_connection_open(self):
        opened = threading.Event()

        def hold() -> None:
            query()
            opened.set()
            self.release.wait(10)
            connection.close()

        thread = threading.Thread(target=hold, name="sample-worker", daemon=True)
        thread.start()
        self.held.append(thread)
        self.assertTrue(opened.wait(10))

    def test_bad_thread_ends_without_closing(self):
        thread = threading.Thread(target=query, name="sample-worker")
        thread.start()
        thread.join()


class CloseTests(TransactionTestCase):
    def test_clean_query(self):
        query()
        print("driver:", type(connection.connection).__module__)

    def test_bad_double_close(self):
        connection.close()  # a session of its own, opened on the next line
        query()
        connection.connection.close()  # behind Django's back
        connection.close()

    def test_bad_close_error(self):
        connection.close()
        query()
        connection.connection = FailingClose(connection.connection)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            connection.close()


class ForkTests(TestCase):  # a TestCase runs first, before anything closes the startup session
    def test_fork_after_a_startup_query(self):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
