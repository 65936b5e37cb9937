"""A tiny suite for ``manage.py test --parallel 2``: each worker checks the runner's session.

Django's parallel runner forks its workers while the runner holds a
connection, and each worker calls ``close()`` on its copy
(``setup_worker_connection``). Each test here finds the session its worker
inherited (``conntrace.history()``) and checks that PostgreSQL still has it:
true with ``FORK_POLICY="reset"``, false with ``"warn"`` (the worker's close
sent Terminate on the runner's socket).
"""

import time

from django.db import connection
from django.test import SimpleTestCase

import conntrace

SETTLE_S = 0.3  # time for the server to end a session after a Terminate


def _runners_sessions_alive(case: SimpleTestCase) -> None:
    inherited = [r for r in conntrace.history() if r["inherited"] and r["alias"] == "default"]
    case.assertTrue(inherited, "this worker inherited no connection from the runner")
    backend_pids = sorted({r["backend_pid"] for r in inherited})
    deadline = time.monotonic() + SETTLE_S
    while True:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [backend_pids])
            alive = cursor.fetchone()[0]
        if alive < len(backend_pids) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    case.assertEqual(alive, len(backend_pids), f"the runner's sessions {backend_pids} were ended by a worker")


class FirstWorkerTests(SimpleTestCase):
    databases = {"default"}

    def test_the_runners_session_is_still_alive(self) -> None:
        _runners_sessions_alive(self)


class SecondWorkerTests(SimpleTestCase):
    databases = {"default"}

    def test_the_runners_session_is_still_alive(self) -> None:
        _runners_sessions_alive(self)
