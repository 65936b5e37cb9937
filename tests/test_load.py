"""Load: many threads opening, using and closing connections through Django, on real PostgreSQL.

Every cycle is Django's own path: ``connect()`` on first use, a query through the
ORM (or a whole WSGI request), then ``close()``. The assertions are exact: one
``connection_opened`` and one ``connection_closed`` per cycle, no record lost or
duplicated, ``conntrace.live()`` empty at the end.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.db import connection, connections
from django.db.backends.postgresql.base import DatabaseWrapper
from django.test import RequestFactory

import conntrace
from conntrace import fork_reports, lifecycle, process
from tests.conftest import named

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

THREADS = 32
CYCLES = 1_000
# A real PostgreSQL session costs ~3.4 ms of connect + SCRAM authentication on a
# 2-CPU runner: 32 x 1,000 of them take ~110 s. The full count runs through a psycopg
# pool (every cycle is still Django's connect/close, recorded by conntrace); the
# real-session test below opens 32 x REAL_CYCLES fresh server sessions.
REAL_CYCLES = 30
POOLED = "pooled"
LENT = ("connection_opened", "connection_checked_out")


def run_threads(work: Any, count: int) -> tuple[list[BaseException], float]:
    """Run ``work(index)`` in ``count`` threads started together; return their errors and the time taken."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def body(index: int) -> None:
        try:
            barrier.wait()
            work(index)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=body, args=(i,), name=f"load-{i}") for i in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors, time.perf_counter() - started


def assert_exact_life(logs: list[dict[str, Any]], alias: str, threads: int, cycles: int) -> None:
    """Check one open and one close event per cycle, each conn_id once, cycles per thread."""
    # Each cycle is a new session (connection_opened) or a pool's checkout of one it had.
    opened = [e for e in logs if e["event"] in LENT and e["alias"] == alias]
    closed = [e for e in named(logs, "connection_closed") if e["alias"] == alias]
    total = threads * cycles
    assert len(opened) == total
    assert len(closed) == total
    opened_ids = Counter(e["conn_id"] for e in opened)
    closed_ids = Counter(e["conn_id"] for e in closed)
    assert len(opened_ids) == total, "a conn_id was reused"
    assert opened_ids == closed_ids, "a record was lost or closed twice"
    assert Counter(e["thread"] for e in opened) == {f"load-{i}": cycles for i in range(threads)}
    assert all(e["close_count"] == 1 for e in closed)
    assert all(isinstance(e["backend_pid"], int) for e in opened)
    assert [e for e in logs if e["log_level"] not in ("debug", "info")] == []
    assert not [r for r in conntrace.live() if r["alias"] == alias]


@pytest.fixture
def pooled_settings() -> Iterator[dict[str, Any]]:
    """Give the test database's settings behind a psycopg pool big enough for every thread.

    Each thread builds its own ``DatabaseWrapper`` from them, as Django's connection handler
    does; the pool is shared by alias.
    """
    base = connections["default"].settings_dict
    options = {**base["OPTIONS"], "pool": {"min_size": 4, "max_size": THREADS + 4, "timeout": 30}}
    settings_dict = {**base, "OPTIONS": options}
    yield settings_dict
    DatabaseWrapper(settings_dict, alias=POOLED).close_pool()


def test_32_threads_x_1000_cycles_through_a_pool_lose_and_duplicate_nothing(captured, pooled_settings):
    def work(index: int) -> None:
        wrapper = DatabaseWrapper(pooled_settings, alias=POOLED)
        for _ in range(CYCLES):
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM app_setting")
                assert cursor.fetchone() == (0,)
            wrapper.close()

    errors, took = run_threads(work, THREADS)
    assert errors == []
    assert_exact_life(captured, POOLED, THREADS, CYCLES)
    outcomes = {e["outcome"] for e in named(captured, "connection_closed") if e["alias"] == POOLED}
    assert outcomes == {"returned_to_pool"}
    # connection_opened counts the sessions the pool made, each once; the rest are checkouts.
    new_sessions = [e["backend_pid"] for e in named(captured, "connection_opened") if e["alias"] == POOLED]
    assert len(new_sessions) == len(set(new_sessions)) <= THREADS + 4
    assert {e["backend_pid"] for e in named(captured, "connection_checked_out")} <= set(new_sessions)
    assert named(captured, "pool_exhausted") == []
    print(f"\n{THREADS} threads x {CYCLES} pooled cycles: {took:.1f} s")


def test_32_threads_of_requests_each_opening_a_real_server_session(captured):
    """Each request opens a new PostgreSQL session and request_finished closes it (CONN_MAX_AGE 0)."""
    handler = WSGIHandler()
    environ = RequestFactory().get("/count/").environ

    def work(index: int) -> None:
        for _ in range(REAL_CYCLES):
            response = handler(dict(environ), lambda status, headers: None)
            assert b"".join(response) == b"0"
            response.close()

    errors, took = run_threads(work, THREADS)
    assert errors == []
    assert_exact_life(captured, "default", THREADS, REAL_CYCLES)
    opened = [e for e in named(captured, "connection_opened") if e["alias"] == "default"]
    assert len({e["backend_pid"] for e in opened}) > THREADS  # really new sessions, not one per thread
    assert {e["outcome"] for e in named(captured, "connection_closed")} == {"closed"}
    print(f"\n{THREADS} threads x {REAL_CYCLES} real sessions: {took:.1f} s")


MEMORY_CYCLES = 20_000  # the benchmark's default is 100,000 (~15 s); 20,000 keep CI fast
MIB = 1024 * 1024
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_memory_stays_flat_over_connect_close_cycles():
    """Run benchmarks/memory.py in a fresh process (pooled PostgreSQL) and check the bound it prints."""
    script = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "memory.py"
    )
    out = subprocess.run(
        [sys.executable, script, "--cycles", str(MEMORY_CYCLES), "--warmup", "5000", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\nRSS growth over {MEMORY_CYCLES:,} cycles: {result['growth_bytes'] / 1024:+.0f} KiB")
    assert result["growth_bytes"] < 1 * MIB
    assert result["events"] == 2 * MEMORY_CYCLES  # every event was built and handed to structlog
    assert result["live_records"] == 0
    assert result["history_records"] == result["max_records"] == 500  # bounded history
    assert result["wrappers_alive_after"] <= result["wrappers_alive_before"]  # every wrapper was freed


def test_abandoned_connections_leave_nothing_behind(captured):
    """Wrappers dropped while open (threads ending with their connection) are forgotten entirely."""
    lite = connections["lite"].settings_dict
    backend = type(connections["lite"])
    gc.collect()  # wrappers earlier tests dropped: their references leave _watched now, not below
    watched_before = len(lifecycle._watched)
    for _ in range(2_000):
        wrapper = backend(lite, alias="lite-abandoned")
        wrapper.ensure_connection()
        del wrapper  # no close(): the garbage collector finds it in a reference cycle
    gc.collect()
    assert [r for r in conntrace.live() if r["alias"] == "lite-abandoned"] == []  # also flushes reports
    assert len(lifecycle._watched) == watched_before
    assert not process.pending
    assert (
        len([e for e in named(captured, "connection_abandoned") if e["alias"] == "lite-abandoned"]) == 2_000
    )


FORKS = 200
FORK_BATCH = 20  # children alive at once


def child_after_fork(policy: str, events_path: str) -> dict[str, Any]:
    """Run in a forked child: log to a JSON-lines file of its own, do what a worker does, report."""
    import structlog

    with open(events_path, "w", buffering=1) as out:
        structlog.configure(
            processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
            logger_factory=structlog.WriteLoggerFactory(file=out),
            wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        )
        result: dict[str, Any] = {"raised": None}
        if policy == "warn":
            conntrace.live()  # warn shares the parent's session: the child must not use it (flush only)
            return result
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except conntrace.InheritedConnectionError as exc:
            result["raised"] = type(exc).__name__
        with connection.cursor() as cursor:  # the child's own session
            cursor.execute("SELECT pg_backend_pid()")
            result["backend_pid"] = cursor.fetchone()[0]
        return result


def fork_children(policy: str, tmp_path: Any) -> dict[int, dict[str, Any]]:
    """Fork FORKS children, FORK_BATCH at a time; return each child's report by pid."""
    reports: dict[int, dict[str, Any]] = {}
    for _ in range(FORKS // FORK_BATCH):
        batch = {}
        for _ in range(FORK_BATCH):
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.close(read_end)
                    report = child_after_fork(policy, str(tmp_path / f"{os.getpid()}.jsonl"))
                    os.write(write_end, json.dumps(report).encode())
                    code = 0
                finally:
                    os._exit(code)
            os.close(write_end)
            batch[pid] = read_end
        for pid, read_end in batch.items():
            with os.fdopen(read_end) as pipe:
                text = pipe.read()
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, f"child {pid} failed"
            reports[pid] = json.loads(text)
    return reports


@pytest.mark.parametrize("policy", ["reset", "warn", "raise"])
def test_200_forks_with_an_open_connection(policy, settings, captured, tmp_path):
    settings.CONNTRACE = {"FORK_POLICY": policy}
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        parent_backend = cursor.fetchone()[0]
    [record] = [r for r in conntrace.live() if r["alias"] == "default"]
    started = time.perf_counter()
    reports = fork_children(policy, tmp_path)
    took = time.perf_counter() - started

    with connection.cursor() as cursor:  # the parent's session still works, and it is the same one
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] == parent_backend
    at_fork = [e for e in named(captured, "connection_open_at_fork") if e["conn_id"] == record["conn_id"]]
    assert len(at_fork) == 1  # the first fork reports the line; the other 199 are counted
    assert conntrace.live()[0]["open_at_forks"] == FORKS
    fork_reports.report_repeats()  # what the parent says at exit
    [repeated] = named(captured, "conntrace_reports_repeated")
    line = at_fork[0]["opened_in"]
    assert [r["count"] for r in repeated["repeats"] if r["opened_in"] == line] == [FORKS - 1]

    assert len(reports) == FORKS
    for pid, report in reports.items():
        lines = [json.loads(line) for line in (tmp_path / f"{pid}.jsonl").read_text().splitlines()]
        inherited = [e for e in lines if e["event"] == "connection_fork_inherited"]
        assert len(inherited) == 1, (pid, lines)  # every child's event, exactly once
        assert (inherited[0]["conn_id"], inherited[0]["pid"]) == (record["conn_id"], pid)
        # A child that "reset" healed warns; one that shares the session or will raise is an error.
        level = "warning" if policy == "reset" else "error"
        assert (inherited[0]["policy"], inherited[0]["level"]) == (policy, level)
        if policy == "warn":
            assert report == {"raised": None}
        else:
            assert report["raised"] == ("InheritedConnectionError" if policy == "raise" else None)
            assert report["backend_pid"] != parent_backend  # the child opened its own session
    print(f"\n{FORKS} forks under {policy!r}: {took:.1f} s")
