"""Properties: random sequences of open / use / close / close-again / kill / fork / thread operations.

A hypothesis state machine drives Django ``DatabaseWrapper`` objects on real
PostgreSQL and SQLite, keeps its own model of what each close must record, and
after every step checks the invariants:

* every open has exactly one record (one ``connection_opened`` event, a conn_id never reused);
* every close attempt is recorded once, in order, with the right outcome;
* ``conntrace.live()`` lists exactly the connections Django really holds open.

Examples are bounded (``MAX_EXAMPLES`` x ``STEPS``) so the whole run stays well under 30 s.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from typing import Any, Optional

import pytest
from django.db import DatabaseError, connections
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

import conntrace
from conntrace import drivers, lifecycle, records
from conntrace.names import Outcome
from tests import pgserver

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

MAX_EXAMPLES = 30
STEPS = 15
PREFIX = "prop-"
WRAPPERS = ("prop-pg-0", "prop-pg-1", "prop-lite")
BOUNDED = hypothesis_settings(
    max_examples=MAX_EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    database=None,  # no example database written into the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def superuser_connection(driver: Any) -> Any:
    """Open a driver connection as the superuser, outside Django (so untraced), for pg_terminate_backend."""
    host, port = pgserver.ensure()
    conn = driver.connect(host=host, port=port, user="postgres", dbname="postgres")
    conn.autocommit = True
    return conn


def really_open(wrapper: Any) -> bool:
    return wrapper.connection is not None


class ConnectionLife(RuleBasedStateMachine):
    """Operations on two PostgreSQL wrappers and one SQLite wrapper, with the expected record of each."""

    logs: list[dict[str, Any]] = []  # set by the test: structlog's captured events
    admin: Any = None

    def __init__(self) -> None:
        super().__init__()
        pg = connections["default"]
        lite = connections["lite"]
        self.wrappers = [
            type(pg)(pg.settings_dict, alias=WRAPPERS[0]),
            type(pg)(pg.settings_dict, alias=WRAPPERS[1]),
            type(lite)(lite.settings_dict, alias=WRAPPERS[2]),
        ]
        self.records: dict[int, records.ConnectionRecord] = {}  # every record this example made
        self.expected: dict[int, list[tuple[str, Optional[str]]]] = {}  # conn_id -> (outcome, closed_by)
        self.driver_closed: set[int] = set()  # wrapper indexes whose session ended behind Django's back
        self.killed_by: dict[int, str] = {}  # ... and who ended it
        self.first_event = len(self.logs)

    # ------------------------------------------------------------------ helpers

    def record(self, index: int) -> Optional[records.ConnectionRecord]:
        return lifecycle.record_of(self.wrappers[index])

    def expect_close(self, index: int) -> None:
        """Append the outcome the next close of wrapper ``index`` must record."""
        record = self.record(index)
        if record is None:
            return  # never opened: Django returns at once and there is nothing to record
        if not really_open(self.wrappers[index]):
            self.expected[record.conn_id].append((Outcome.NOOP, None))
        elif index in self.driver_closed:
            by = self.killed_by[index]
            if by == "server" and record.open_at_forks:
                by = "server_or_forked_child"  # a child could have ended it too: conntrace says so
            self.expected[record.conn_id].append((Outcome.ALREADY_CLOSED, by))
        else:
            self.expected[record.conn_id].append((Outcome.CLOSED, None))

    def after_open(self, index: int, before: Optional[records.ConnectionRecord]) -> None:
        record = self.record(index)
        assert record is not None
        if before is not None and record is before:
            return  # already open: nothing new
        assert record.conn_id not in self.records, "a conn_id was reused"
        self.records[record.conn_id] = record
        self.expected[record.conn_id] = []
        self.driver_closed.discard(index)

    # ------------------------------------------------------------------ rules

    @rule(index=st.integers(0, 2))
    def open(self, index: int) -> None:
        before = self.record(index) if really_open(self.wrappers[index]) else None
        self.wrappers[index].ensure_connection()
        self.after_open(index, before)

    @rule(index=st.integers(0, 2))
    def use(self, index: int) -> None:
        if index in self.driver_closed:
            return  # Django would raise on a dead session; the close rules cover it
        before = self.record(index) if really_open(self.wrappers[index]) else None
        with self.wrappers[index].cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
        self.after_open(index, before)

    @rule(index=st.integers(0, 2))
    def close(self, index: int) -> None:
        self.expect_close(index)
        self.wrappers[index].close()
        self.driver_closed.discard(index)

    @rule(index=st.integers(0, 2))
    def close_again(self, index: int) -> None:
        self.close(index)
        self.close(index)

    @rule(index=st.integers(0, 2))
    def close_the_driver_connection_directly(self, index: int) -> None:
        wrapper = self.wrappers[index]
        if not really_open(wrapper) or index in self.driver_closed:
            return
        psycopg3 = drivers.family(wrapper.connection) == "psycopg"
        wrapper.connection.close()
        if psycopg3:
            # psycopg 3's close is Python: conntrace records it when it happens, with its line.
            self.expected[self.record(index).conn_id].append((Outcome.CLOSED, "application"))
        self.driver_closed.add(index)
        self.killed_by[index] = "application"

    @rule(index=st.integers(0, 1))
    def terminate_on_the_server(self, index: int) -> None:
        wrapper = self.wrappers[index]
        if not really_open(wrapper) or index in self.driver_closed:
            return
        pid = self.record(index).backend_pid
        with self.admin.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))
            for _ in range(200):
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
                if cursor.fetchone()[0] == 0:
                    break
                time.sleep(0.01)
        time.sleep(0.02)  # the server's goodbye reaches the socket
        self.driver_closed.add(index)
        self.killed_by[index] = "server"

    @rule(index=st.integers(0, 2))
    def close_from_another_thread(self, index: int) -> None:
        """Django refuses (a wrapper belongs to its thread); conntrace must record nothing."""
        errors: list[BaseException] = []

        def body() -> None:
            try:
                self.wrappers[index].close()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=body)
        thread.start()
        thread.join()
        if self.record(index) is not None or really_open(self.wrappers[index]):
            assert len(errors) == 1 and isinstance(errors[0], DatabaseError)

    @rule(leave_open=st.booleans(), vendor=st.sampled_from(["pg", "lite"]))
    def thread(self, leave_open: bool, vendor: str) -> None:
        """A thread opens its own connection, then closes it or ends holding it (abandoned)."""
        template = connections["default" if vendor == "pg" else "lite"]
        made: list[records.ConnectionRecord] = []

        def body() -> None:
            wrapper = type(template)(template.settings_dict, alias=f"{PREFIX}thread-{vendor}")
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT 1")
            made.append(lifecycle.record_of(wrapper))
            if not leave_open:
                wrapper.close()

        thread = threading.Thread(target=body)
        thread.start()
        thread.join()
        del thread
        if leave_open:
            gc.collect()  # the wrapper (in Django's reference cycles) is freed here: the abandoned report
        [record] = made
        assert record.conn_id not in self.records
        self.records[record.conn_id] = record
        self.expected[record.conn_id] = [(Outcome.ABANDONED if leave_open else Outcome.CLOSED, None)]

    @rule()
    def fork(self) -> None:
        """Fork: the child sees none of the parent's connections (reset), opens its own; the parent's work."""
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report through the pipe, never return into pytest
            code = 1
            try:
                os.close(read_end)
                inherited = sorted(r["conn_id"] for r in conntrace.live() if r["alias"].startswith(PREFIX))
                with self.wrappers[0].cursor() as cursor:
                    cursor.execute("SELECT 1")
                    selected = cursor.fetchone()
                mine = [r["conn_id"] for r in conntrace.live() if r["alias"].startswith(PREFIX)]
                report = {"inherited": inherited, "selected": list(selected), "live": len(mine)}
                os.write(write_end, json.dumps(report).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            report = json.loads(pipe.read() or "{}")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert report == {"inherited": [], "selected": [1], "live": 1}
        for index, wrapper in enumerate(self.wrappers):
            if really_open(wrapper) and index not in self.driver_closed:
                with wrapper.cursor() as cursor:  # the parent's session survived the child
                    cursor.execute("SELECT 1")

    # ------------------------------------------------------------------ invariants

    @invariant()
    def live_is_what_django_really_holds(self) -> None:
        live = [r["conn_id"] for r in conntrace.live() if r["alias"].startswith(PREFIX)]
        assert len(live) == len(set(live)), "a record is listed twice"
        held = {self.record(i).conn_id for i, w in enumerate(self.wrappers) if really_open(w)}
        assert set(live) == held

    @invariant()
    def every_close_attempt_is_recorded_once_with_its_outcome(self) -> None:
        for conn_id, record in self.records.items():
            got = [(c.outcome, c.closed_by) for c in record.closes]
            assert got == self.expected[conn_id], conn_id
            assert record.close_count == len(self.expected[conn_id])

    @invariant()
    def every_open_has_exactly_one_opened_event(self) -> None:
        mine = [e for e in self.logs[self.first_event :] if e["alias"].startswith(PREFIX)]
        opened = [e["conn_id"] for e in mine if e["event"] == "connection_opened"]
        assert sorted(opened) == sorted(self.records)

    def teardown(self) -> None:
        for wrapper in self.wrappers:
            try:
                wrapper.close()
            except Exception:
                pass


@pytest.mark.drivers
def test_random_connection_lives_keep_every_invariant(captured, settings):
    # Every close polls the socket: the model expects each server-side end to be seen at once.
    settings.CONNTRACE = {"FORK_POLICY": "reset", "SOCKET_CHECK_AFTER_S": 0}
    admin = superuser_connection(connections["default"].Database)
    ConnectionLife.logs = captured
    ConnectionLife.admin = admin
    started = time.monotonic()
    try:
        run_state_machine_as_test(ConnectionLife, settings=BOUNDED)
    finally:
        admin.close()
    print(f"\nstate machine: {MAX_EXAMPLES} examples x {STEPS} steps in {time.monotonic() - started:.1f} s")


def test_a_record_closed_after_the_registry_was_cleared_is_never_reported_abandoned(captured):
    """Regression: registry.clear() left a later-closed record OPEN; the next connect called it abandoned."""
    wrapper = connections["default"]
    wrapper.ensure_connection()
    records.registry.clear()  # as a test fixture does while a connection is open
    wrapper.close()
    wrapper.ensure_connection()
    wrapper.close()
    assert [e for e in captured if e["event"] == "connection_abandoned"] == []
