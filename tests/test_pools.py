"""Django's psycopg pool, on real PostgreSQL and a real psycopg_pool: who holds its connections.

A pool of two with a one-second timeout: two threads take its connections at
known lines and keep them; a third checkout times out. ``pool_exhausted``
names both holders before Django's ``OperationalError`` (wrapping
``PoolTimeout``) reaches the caller. A checkout of a session the pool already
had is ``connection_checked_out``, not a new ``connection_opened``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from django.db import OperationalError, connections, transaction
from django.db.backends.postgresql.base import DatabaseWrapper

import conntrace
from conntrace import instrument, panel_stats, panel_tracking, panels, process
from tests.conftest import named
from tests.support import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ALIAS = "small_pool"
HERE = Path(__file__)


def line_of(marker: str) -> str:
    """Return ``tests/test_pools.py:N in `` for the line of this file that ends with ``# marker``."""
    for number, text in enumerate(HERE.read_text().splitlines(), 1):
        if text.rstrip().endswith(f"# {marker}") and "line_of(" not in text:
            return f"tests/test_pools.py:{number} in "
    raise AssertionError(marker)


@pytest.fixture
def small_pool() -> Iterator[dict[str, Any]]:
    """Give the settings of the test database behind a psycopg pool of two with a one-second timeout.

    ``use_small_pool()`` makes them ``connections[ALIAS]`` in the calling thread,
    so that ``atomic(using=ALIAS)`` reaches it; the pool is closed afterwards.
    """
    base = connections["default"].settings_dict
    options = {**base["OPTIONS"], "pool": {"min_size": 1, "max_size": 2, "timeout": 1}}
    SMALL_POOL.update(base, OPTIONS=options)
    yield SMALL_POOL
    use_small_pool().close_pool()
    del connections[ALIAS]
    del _this_thread.wrapper


SMALL_POOL: dict[str, Any] = {}
_this_thread = threading.local()


def use_small_pool() -> DatabaseWrapper:
    """Return this thread's wrapper of the small pool, made on first use (as Django's handler does)."""
    wrapper = getattr(_this_thread, "wrapper", None)
    if wrapper is None:
        connections[ALIAS] = wrapper = _this_thread.wrapper = DatabaseWrapper(SMALL_POOL, alias=ALIAS)
    return wrapper


class Holders:
    """Two threads that check out the pool's two connections and keep them until released."""

    def __init__(self, **context: Any) -> None:
        self.context = context  # the structlog context each holder's "request" binds
        self.taken = threading.Barrier(3)
        self.release = threading.Event()
        self.threads = [
            threading.Thread(target=self.hold_plainly, name="holder-plain"),
            threading.Thread(target=self.hold_in_a_transaction, name="holder-atomic"),
        ]

    def hold_plainly(self) -> None:
        structlog.contextvars.bind_contextvars(**self.context)
        try:
            use_small_pool().ensure_connection()  # plain checkout
            self.keep()
        finally:
            use_small_pool().close()

    def hold_in_a_transaction(self) -> None:
        structlog.contextvars.bind_contextvars(**self.context)
        use_small_pool()
        try:
            with transaction.atomic(using=ALIAS):  # atomic checkout
                self.keep()
        finally:
            use_small_pool().close()

    def keep(self) -> None:
        self.taken.wait(timeout=10)
        self.release.wait(timeout=20)

    def __enter__(self) -> Holders:
        for thread in self.threads:
            thread.start()
        self.taken.wait(timeout=10)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release.set()
        for thread in self.threads:
            thread.join(timeout=20)
        use_small_pool().close()


def take_a_third(captured: list[dict[str, Any]]) -> tuple[BaseException, int]:
    """Try a third checkout; return its exception and how many pool_exhausted were emitted by then."""
    try:
        use_small_pool().ensure_connection()  # the third checkout
    except OperationalError as exc:
        return exc, len(named(captured, "pool_exhausted"))
    raise AssertionError("the third checkout got a connection")


def test_a_checkout_that_times_out_names_both_holders_before_the_error_propagates(small_pool, captured):
    with Holders():
        exc, emitted_before = take_a_third(captured)
    assert emitted_before == 1
    from psycopg_pool import PoolTimeout  # here: the psycopg2 pass hides psycopg 3 from the module

    assert isinstance(exc.__cause__, PoolTimeout)  # Django's wrapper of it, unchanged
    [event] = named(captured, "pool_exhausted")
    assert event["log_level"] == "error"
    assert (event["alias"], event["min_size"], event["max_size"], event["timeout_s"]) == (ALIAS, 1, 2, 1)
    assert (event["size"], event["available"], event["checked_out"], event["holders_unseen"]) == (2, 0, 2, 0)
    assert 0.9 <= event["waited_s"] < 10
    assert event["requested_in"].startswith(line_of("the third checkout"))
    assert event["thread"] == threading.current_thread().name
    assert event["error_type"] == "PoolTimeout"
    holders = {h["thread"]: h for h in event["holders"]}
    assert set(holders) == {"holder-plain", "holder-atomic"}
    plain, atomic = holders["holder-plain"], holders["holder-atomic"]
    assert plain["checked_out_in"].startswith(line_of("plain checkout"))
    assert atomic["checked_out_in"].startswith(line_of("atomic checkout"))
    assert plain["checked_out_stack"][-1].startswith(line_of("plain checkout"))
    assert (plain["in_transaction"], plain["transaction_started_in"]) == (False, None)
    assert atomic["in_transaction"] is True
    assert atomic["transaction_started_in"] == atomic["checked_out_in"]
    for holder in (plain, atomic):
        assert holder["pid"] == os.getpid()
        assert holder["in_this_process"] is True
        assert holder["thread_alive"] is True
        assert 0.9 <= holder["held_s"] < 20
        assert isinstance(holder["backend_pid"], int)
    assert plain["backend_pid"] != atomic["backend_pid"]


def refuse_a_second_waiter(small_pool: dict[str, Any]) -> None:
    """Make the small pool refuse a checkout at once (``TooManyRequests``) while one already waits."""
    pool = {"min_size": 2, "max_size": 2, "timeout": 5, "max_waiting": 1}
    small_pool["OPTIONS"] = {**small_pool["OPTIONS"], "pool": pool}
    use_small_pool().pool.open(wait=True)  # both connections made: the holders take them without waiting


class OneInLine:
    """A thread waiting for one of the small pool's connections, in line until the holders let go."""

    def __init__(self) -> None:
        self.failed: list[BaseException] = []
        self.thread = threading.Thread(target=self.wait_in_line, name="waiter")

    def wait_in_line(self) -> None:
        try:
            use_small_pool().ensure_connection()  # waits for a connection
        except OperationalError as exc:
            self.failed.append(exc)
        finally:
            use_small_pool().close()

    def start(self) -> None:
        """Start waiting (while the holders hold), and return once the pool counts the request."""
        self.thread.start()
        wait_for(lambda: use_small_pool().pool.get_stats().get("requests_waiting") == 1, what="one waiting")

    def join(self) -> None:
        self.thread.join(timeout=20)


def test_a_checkout_refused_because_max_waiting_requests_wait_names_the_holders_at_once(small_pool, captured):
    """``max_waiting``: psycopg_pool refuses a checkout at once with ``TooManyRequests``: exhausted too."""
    refuse_a_second_waiter(small_pool)
    in_line = OneInLine()
    with Holders():
        in_line.start()
        exc, emitted_before = take_a_third(captured)
    in_line.join()
    assert emitted_before == 1
    from psycopg_pool import TooManyRequests

    assert isinstance(exc.__cause__, TooManyRequests)
    assert in_line.failed == []  # the holders let go: the one in line got its connection
    [event] = named(captured, "pool_exhausted")
    assert (event["error_type"], event["waiting"], event["checked_out"]) == ("TooManyRequests", 1, 2)
    assert event["waited_s"] < 1  # refused at once, not after the timeout
    assert event["requested_in"].startswith(line_of("the third checkout"))
    assert {h["thread"] for h in event["holders"]} == {"holder-plain", "holder-atomic"}


def test_the_request_context_of_each_holder_is_named(small_pool, captured):
    structlog.contextvars.bind_contextvars(request_id="req-waiting")
    try:
        with Holders(request_id="req-holding"):
            take_a_third(captured)
    finally:
        structlog.contextvars.clear_contextvars()
    [event] = named(captured, "pool_exhausted")
    assert event["request_id"] == "req-waiting"
    assert [h["context"] for h in event["holders"]] == [{"request_id": "req-holding"}] * 2


def test_a_holder_whose_thread_ended_without_returning_it_is_named_dead(small_pool, captured):
    leaked: list[Any] = []

    def take_and_leave() -> None:
        wrapper = use_small_pool()
        wrapper.ensure_connection()  # leaked checkout
        leaked.append(wrapper)  # kept alive, never closed: its thread ends holding the session

    for _ in range(2):
        thread = threading.Thread(target=take_and_leave, name="leaver")
        thread.start()
        thread.join()
    take_a_third(captured)
    [event] = named(captured, "pool_exhausted")
    assert [h["thread_alive"] for h in event["holders"]] == [False, False]
    assert all(h["checked_out_in"].startswith(line_of("leaked checkout")) for h in event["holders"])
    for wrapper in leaked:
        wrapper.connection._pool.putconn(wrapper.connection)
        wrapper.connection = None


def test_pools_lists_sizes_and_holders_while_they_hold(small_pool, captured):
    with Holders():
        [state] = [p for p in conntrace.pools() if p["alias"] == ALIAS]
    assert (state["size"], state["available"], state["waiting"], state["max_size"]) == (2, 0, 0, 2)
    assert sorted(h["thread"] for h in state["holders"]) == ["holder-atomic", "holder-plain"]
    [state] = [p for p in conntrace.pools() if p["alias"] == ALIAS]
    assert (state["available"], state["holders"]) == (2, [])
    assert named(captured, "pool_exhausted") == []


def test_only_a_session_the_pool_creates_is_opened_and_later_checkouts_are_checked_out(small_pool, captured):
    wrapper = use_small_pool()
    for _ in range(3):
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
        assert conntrace.live()[-1]["pooled"] is True
        wrapper.close()
    opened = [e for e in named(captured, "connection_opened") if e["alias"] == ALIAS]
    checked_out = named(captured, "connection_checked_out")
    # The pool may open its second session for an early checkout: each session is opened once.
    new_sessions = [e["backend_pid"] for e in opened]
    assert len(opened) + len(checked_out) == 3 and 1 <= len(opened) <= 2
    assert len(set(new_sessions)) == len(new_sessions)
    assert {e["backend_pid"] for e in checked_out} <= set(new_sessions)
    assert {(e["pooled"], e["log_level"]) for e in opened + checked_out} == {(True, "debug")}
    ended = [r for r in conntrace.history() if r["alias"] == ALIAS]
    in_order = [e for e in captured if e in opened or e in checked_out]  # as they happened
    assert [r["new_session"] for r in ended] == [e["event"] == "connection_opened" for e in in_order]
    assert {r["closes"][-1]["outcome"] for r in ended} == {"returned_to_pool"}
    closed = [e for e in named(captured, "connection_closed") if e["alias"] == ALIAS]
    assert [e["outcome"] for e in closed] == ["returned_to_pool"] * 3


def test_a_connection_without_a_pool_is_a_new_session_every_time(captured):
    for _ in range(2):
        connections["default"].ensure_connection()
        connections["default"].close()
    opened = [e for e in named(captured, "connection_opened") if e["alias"] == "default"]
    assert len(opened) == 2 and "pooled" not in opened[0]
    assert named(captured, "connection_checked_out") == []
    assert [r["new_session"] for r in conntrace.history()] == [True, True]


def test_a_forked_child_names_the_parents_holders_and_counts_those_it_cannot_see(
    small_pool, captured, settings, tmp_path
):
    """FORK_POLICY "warn": the child keeps its copy of the pool, whose two connections the parent holds.

    One was taken through Django (the child inherited its record), the other
    straight from the pool (nobody recorded it): the child names the first and
    counts the second.
    """
    settings.CONNTRACE = {**settings.CONNTRACE, "FORK_POLICY": "warn"}
    wrapper = use_small_pool()
    wrapper.ensure_connection()  # parent's checkout
    pool = wrapper.pool
    raw = pool.getconn()  # not through Django
    out = tmp_path / "child.json"
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover (the child reports through the file)
            code = 1
            try:
                outcome: list[str] = []

                def checkout() -> None:
                    try:
                        use_small_pool().ensure_connection()
                    except OperationalError as exc:
                        outcome.append(type(exc.__cause__).__name__)

                thread = threading.Thread(target=checkout)
                thread.start()
                thread.join()
                process.flush_pending()
                events = named(captured, "pool_exhausted")
                out.write_text(json.dumps({"outcome": outcome, "events": events}, default=str))
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
    finally:
        pool.putconn(raw)
        wrapper.close()
    assert os.waitstatus_to_exitcode(status) == 0
    report = json.loads(out.read_text())
    assert report["outcome"] == ["PoolTimeout"]
    [event] = report["events"]
    assert event["pid"] == child
    assert (event["checked_out"], event["holders_unseen"]) == (2, 1)
    [holder] = event["holders"]
    assert holder["pid"] == os.getpid()
    assert holder["in_this_process"] is False
    assert holder["checked_out_in"].startswith(line_of("parent's checkout"))
    assert (holder["thread_alive"], holder["in_transaction"]) == (None, None)


def test_the_panel_shows_each_pool_its_holders_and_which_checkouts_made_a_session(small_pool):
    session = panel_tracking.Session()

    def observe(kind: Any, wrapper: Any, record: Any) -> None:
        session.observe(kind, record)

    instrument.add_observer(observe)
    try:
        wrapper = use_small_pool()
        for _ in range(3):  # a pool of two: at least one checkout lends a session it had
            wrapper.ensure_connection()
            wrapper.close()
        with Holders(request_id="req-holding"):
            stats = panel_stats.build_stats(session)
    finally:
        instrument.remove_observer(observe)
    stored = json.loads(json.dumps(stats))  # what the toolbar's store gives back
    assert panels.render(stored) == panels.render(stats)
    [pool] = [p for p in stored["pools"] if p["alias"] == ALIAS]
    assert (pool["size"], pool["available"], pool["checked_out"]) == (2, 0, 2)
    html = panels.render(stored)
    assert "<h4>Pools</h4>" in html
    for holder in pool["holders"]:
        assert f'data-conn-id="{holder["conn_id"]}"' in html
        assert holder["checked_out_in"] in html
    assert "holder-atomic" in html and "holder-plain" in html
    assert "request_id=req-holding" in html
    assert "open, began in <code>tests/test_pools.py:" in html
    new = [c["new_session"] for c in stored["connections"]]  # three checkouts, then the two holders
    assert len(new) == 5 and new[0] is True and False in new[:3]
    assert html.count("pool checkout of an existing session") == new.count(False)
    assert html.count("pool checkout: a new session the pool made") == new.count(True)
    # The subtitle counts sessions: a checkout of a session the pool had is reused, not opened.
    assert (stored["counts"]["opened"], stored["counts"]["reused"]) == (new.count(True), new.count(False))
