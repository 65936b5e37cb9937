"""The timed workloads, run inside a configured Django process.

Each ``run_*`` function performs ``n`` operations and returns nothing; the
caller times them (client CPU with ``time.process_time_ns``, wall with
``time.perf_counter_ns``). Operations are measured in place, as an
application runs them, never as isolated micro-benchmarks: code right after a
connect runs with cold caches, and that is the cost users pay.
"""

from __future__ import annotations

import gc
import io
import time
from collections.abc import Callable
from typing import Any

from django.db import connections

DESCRIPTIONS = {
    "W1": "ensure_connection() + close() on PostgreSQL",
    "W2": 'cursor.execute("SELECT 1") on an open cursor',
    "W2c": 'new cursor + execute("SELECT 1") on an open connection (the ORM\'s shape)',
    "W3a": "WSGI request, 3 ORM queries, CONN_MAX_AGE=0",
    "W3b": "WSGI request, 3 ORM queries, CONN_MAX_AGE=60",
    "W3t": "WSGI request, 3 ORM queries, CONN_MAX_AGE=0, ATOMIC_REQUESTS=True (one transaction)",
}
WORKLOADS = tuple(DESCRIPTIONS)


def run_w1(n: int) -> None:
    """Open and close the default connection ``n`` times."""
    conn = connections["default"]
    for _ in range(n):
        conn.ensure_connection()
        conn.close()


_cursor: Any = None


def run_w2(n: int) -> None:
    """Execute ``SELECT 1`` ``n`` times on one cursor of an open connection."""
    global _cursor
    conn = connections["default"]
    if _cursor is None or conn.connection is None or _cursor.cursor.closed:
        conn.ensure_connection()
        _cursor = conn.cursor()
    execute = _cursor.execute
    for _ in range(n):
        execute("SELECT 1")


def run_w2c(n: int) -> None:
    """Create a cursor and execute ``SELECT 1``, ``n`` times, on an open connection."""
    conn = connections["default"]
    conn.ensure_connection()
    for _ in range(n):
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")


def _environ() -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/bench/",
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "testserver",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


_handler: Any = None


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., Any]:
    if not status.startswith("200"):
        raise RuntimeError(f"benchmark view answered {status}")
    return lambda data: None


def _requests(n: int, max_age: int, atomic: bool = False) -> None:
    global _handler
    if _handler is None:
        from django.core.handlers.wsgi import WSGIHandler

        _handler = WSGIHandler()
    handler = _handler
    settings = connections["default"].settings_dict  # the same dict the handler reads ATOMIC_REQUESTS from
    settings["CONN_MAX_AGE"] = max_age
    settings["ATOMIC_REQUESTS"] = atomic
    try:
        for _ in range(n):
            response = handler(_environ(), _start_response)
            b"".join(response)
            response.close()  # request_finished: close_old_connections() runs here
    finally:
        settings["ATOMIC_REQUESTS"] = False


def run_w3a(n: int) -> None:
    """Serve ``n`` requests through the WSGI handler, connection closed at each end."""
    _requests(n, 0)


def run_w3b(n: int) -> None:
    """Serve ``n`` requests through the WSGI handler, connection kept (CONN_MAX_AGE=60)."""
    _requests(n, 60)


def run_w3t(n: int) -> None:
    """Serve ``n`` requests as W3a does, each inside one transaction (ATOMIC_REQUESTS)."""
    _requests(n, 0, atomic=True)


RUNNERS: dict[str, Callable[[int], None]] = {
    "W1": run_w1,
    "W2": run_w2,
    "W2c": run_w2c,
    "W3a": run_w3a,
    "W3b": run_w3b,
    "W3t": run_w3t,
}


def reset_connection() -> None:
    """Close the default connection between workloads, so each starts as it expects."""
    global _cursor
    _cursor = None
    connections["default"].close()


def timed(workload: str, n: int) -> tuple[int, int]:
    """Run ``n`` operations of ``workload``; return (CPU ns, wall ns) for all of them.

    A full collection runs first so that each sample starts from the same
    state; the collector stays on while timing, because the collections a
    contender's allocations trigger are part of its cost.
    """
    run = RUNNERS[workload]
    gc.collect()
    c0 = time.process_time_ns()
    w0 = time.perf_counter_ns()
    run(n)
    w1 = time.perf_counter_ns()
    c1 = time.process_time_ns()
    return c1 - c0, w1 - w0


def setup_data() -> None:
    """Create the Setting table with a few rows (idempotent)."""
    from django.db import connection

    from tests.app.models import Setting

    with connection.cursor() as cursor:
        tables = connection.introspection.table_names(cursor)
    if Setting._meta.db_table not in tables:
        with connection.schema_editor() as editor:
            editor.create_model(Setting)
    if not Setting.objects.exists():
        Setting.objects.bulk_create(Setting(key=f"k{i}", value=f"v{i}") for i in range(20))
    connection.close()


def cleanup() -> None:
    """Close every connection and remove this process's SQLite file."""
    import os

    from django.db import connections

    connections.close_all()
    name = connections["lite"].settings_dict["NAME"]
    for suffix in ("", "-journal", "-wal", "-shm"):
        try:
            os.remove(name + suffix)
        except OSError:
            pass
