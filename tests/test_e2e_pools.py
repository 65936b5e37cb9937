"""Django's psycopg pool under a real gunicorn with threaded workers (``--threads``), on real PostgreSQL.

A slow view keeps both connections of a pool of two while a third request
waits one second for one: ``pool_exhausted`` names the two holders, their view
line and request. Under normal load, ``connection_opened`` counts the sessions
the pools created (the server's ``pg_stat_activity`` agrees) and every other
checkout is ``connection_checked_out``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests import pgserver
from tests.conftest import named
from tests.e2e import client
from tests.e2e import db as e2e_db
from tests.support import free_port, server_env, stop, wait_for, wait_listening

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "conntrace_e2e_pools"
HOLD_LINE = "tests/e2e/pool_views.py:12 in hold"
ECHO_LINE = "tests/e2e/shop/views.py:12 in echo"


@pytest.fixture(scope="module")
def database() -> str:
    return e2e_db.create(DATABASE)


@contextmanager
def gunicorn(
    tmp_path: Path, workers: int, threads: int, pool: dict[str, Any]
) -> Iterator[tuple[int, subprocess.Popen]]:
    """Run gunicorn's gthread workers on the pooled project; give its port, then stop it."""
    port = free_port()
    env = server_env(
        "tests.e2e.pool_gthread_settings",
        CONNTRACE_E2E_DBNAME=DATABASE,
        CONNTRACE_E2E_LOG=str(tmp_path / "events.jsonl"),
        CONNTRACE_E2E_POOL_MIN=str(pool["min_size"]),
        CONNTRACE_E2E_POOL_MAX=str(pool["max_size"]),
        CONNTRACE_E2E_POOL_TIMEOUT=str(pool["timeout"]),
    )
    command = [
        sys.executable, "-m", "gunicorn", "tests.e2e.pool_wsgi:application",
        "--workers", str(workers), "--threads", str(threads), "--worker-class", "gthread",
        "--bind", f"127.0.0.1:{port}", "--timeout", "30", "--graceful-timeout", "5",
    ]  # fmt: skip
    with open(tmp_path / "gunicorn.log", "wb") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(port, server, name="gunicorn")
            yield port, server
        finally:
            stop(server)


def sessions_on_the_server() -> set[int]:
    """Return the backend pids of the application's sessions to the project's database, per the server."""
    out = pgserver.server().psql(
        f"SELECT pid FROM pg_stat_activity WHERE datname = '{DATABASE}' AND usename = '{pgserver.APP_USER}'"
    )
    return {int(line) for line in out.split()}


def test_a_slow_view_holding_the_pool_is_named_when_a_request_times_out(database, tmp_path):
    holding: list[Any] = []
    with gunicorn(tmp_path, workers=1, threads=4, pool={"min_size": 1, "max_size": 2, "timeout": 1}) as (
        port,
        _,
    ):
        holders = [
            threading.Thread(target=lambda: holding.append(client.get(port, "/hold/4/"))) for _ in range(2)
        ]
        for thread in holders:
            thread.start()
        wait_for(lambda: len(sessions_sleeping()) == 2, timeout=10, what="two requests holding the pool")
        started = time.monotonic()
        third = client.get(port, "/echo/third/")
        waited = time.monotonic() - started
        for thread in holders:
            thread.join(timeout=15)
        after = client.get(port, "/echo/after/")
    events = client.read_events(tmp_path / "events.jsonl")
    assert holding == [(200, "held")] * 2
    assert third[0] == 500 and 0.9 <= waited < 4
    assert after == (200, "after")  # the pool serves again once the slow view returned
    [exhausted] = named(events, "pool_exhausted")
    assert exhausted["level"] == "error"
    assert (exhausted["max_size"], exhausted["timeout_s"], exhausted["available"]) == (2, 1, 0)
    assert exhausted["requested_in"] == ECHO_LINE
    assert exhausted["holders_unseen"] == 0
    assert len(exhausted["holders"]) == 2
    for holder in exhausted["holders"]:
        assert holder["checked_out_in"] == HOLD_LINE
        assert holder["context"] == {"request_path": "/hold/4/"}
        assert holder["thread_alive"] is True and holder["in_this_process"] is True
        assert holder["pid"] == exhausted["process"]
        assert holder["in_transaction"] is False
        assert 0.5 <= holder["held_s"] < 4
    assert {h["backend_pid"] for h in exhausted["holders"]} <= {
        e["backend_pid"] for e in events if e["event"] in ("connection_opened", "connection_checked_out")
    }


def sessions_sleeping() -> list[str]:
    """Return the server's sessions of the project's database that run the slow view's query."""
    out = pgserver.server().psql(
        f"SELECT pid FROM pg_stat_activity WHERE datname = '{DATABASE}' AND query LIKE 'SELECT pg_sleep(%'"
        " AND state = 'active'"
    )
    return out.split()


WORKERS = 2
THREADS = 4
POOL_SIZE = 2
REQUESTS = 300
CONCURRENCY = 8


def test_under_threaded_workers_connection_opened_counts_the_sessions_the_pools_created(database, tmp_path):
    pool = {"min_size": POOL_SIZE, "max_size": POOL_SIZE, "timeout": 10}  # a fixed number of sessions
    with gunicorn(tmp_path, workers=WORKERS, threads=THREADS, pool=pool) as (port, _):
        outcomes = client.load(port, REQUESTS, CONCURRENCY, within_s=40)
        on_the_server = sessions_on_the_server()
    events = client.read_events(tmp_path / "events.jsonl")
    assert outcomes == Counter({client.OK: REQUESTS})
    opened = named(events, "connection_opened")
    checked_out = named(events, "connection_checked_out")
    # Every session the pools made was lent, and was opened once: what the server lists.
    assert len(on_the_server) == WORKERS * POOL_SIZE
    assert sorted(e["backend_pid"] for e in opened) == sorted(on_the_server)
    assert {e["backend_pid"] for e in checked_out} == on_the_server
    assert {e["pooled"] for e in opened + checked_out} == {True}
    # One checkout per request, and one per worker at start (the project's import-time query).
    assert len(opened) + len(checked_out) == REQUESTS + WORKERS
    closed = named(events, "connection_closed")
    assert len(closed) == REQUESTS + WORKERS and {e["outcome"] for e in closed} == {"returned_to_pool"}
    # A healthy run says nothing above debug.
    assert [e for e in events if e["level"] not in ("debug", "info")] == []
    print(f"\n{REQUESTS} requests: {len(opened)} sessions opened, {len(checked_out)} checkouts")
