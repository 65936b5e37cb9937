"""Connections that cross fork(): reports at both ends, the three policies, and the parent's session.

The children are real: ``os.fork()`` and ``multiprocessing`` with the fork start
method, from this process (events captured by the inherited ``capture_logs``
and sent back through a pipe) or from a fresh interpreter
(``tests/e2e/forkscenario.py``) so that children also end with a normal
interpreter exit. Django's own parallel test runner runs in a subprocess.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import select
import subprocess
import sys
import time
import unittest
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.db import OperationalError, connection, connections
from django.test.runner import DiscoverRunner

import conntrace
from conntrace import InheritedConnectionError, fork_reports, process, watchdog
from tests.conftest import named
from tests.support import run_module

pytestmark = [pytest.mark.django_db(transaction=True, databases=["default", "other", "lite"])]

ROOT = Path(__file__).resolve().parent.parent
FORK_WAYS = ["os.fork", "multiprocessing"]


# --------------------------------------------------------------------------- helpers


def in_child(body: Callable[[], Any], how: str = "os.fork", timeout: float = 20) -> Any:
    """Run ``body`` in a forked child and return what it returned (JSON), or its error as a string."""
    read_fd, write_fd = os.pipe()

    def child() -> None:
        os.close(read_fd)
        try:
            result: Any = {"value": body()}
        except BaseException as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        with os.fdopen(write_fd, "w") as out:
            json.dump(result, out, default=str)

    if how in ("os.fork", "libc-untold"):
        # libc-untold: fork() called from C with the GIL held and nothing else, as uWSGI does by
        # default: none of Python's at-fork hooks run in the parent or the child.
        pid = os.fork() if how == "os.fork" else ctypes.PyDLL(None).fork()
        if pid == 0:
            try:
                child()
            finally:
                os._exit(0)
        proc = None
    else:
        proc = multiprocessing.get_context("fork").Process(target=child)
        proc.start()
    os.close(write_fd)
    chunks = []
    deadline = time.monotonic() + timeout
    with os.fdopen(read_fd, "rb") as pipe:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([pipe], [], [], 0.1)
            if ready:
                chunk = os.read(pipe.fileno(), 65536)
                if not chunk:
                    break
                chunks.append(chunk)
    if proc is None:
        os.waitpid(pid, 0)
    else:
        proc.join(5)
    result = json.loads(b"".join(chunks) or b'{"error": "child hung"}')
    if "error" in result:
        return result["error"]
    return result["value"]


def backend_pid(alias: str = "default") -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def events_since(logs: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
    """Return the events captured after ``start``, as plain data a child can send back."""
    return [dict(entry) for entry in logs[start:]]


def source_line(frame: str) -> str:
    """Return the source line a ``"path:line in func"`` frame points at."""
    path, rest = frame.split(":", 1)
    return (ROOT / path).read_text().splitlines()[int(rest.split(" in ")[0]) - 1]


def assert_names_this_test(event: dict[str, Any]) -> None:
    """Check that an event names the line of the test that opened the connection."""
    assert event["opened_in"].startswith("tests/test_forking.py:")
    assert event["opened_in"].endswith(" in backend_pid")
    caller = event["opened_stack"][1]
    assert caller.endswith(" in test_each_fork_reports_every_open_connection_in_parent_and_child")
    assert "# opened here" in source_line(caller)


# --------------------------------------------------------------------------- reports


@pytest.mark.drivers
def test_each_fork_reports_every_open_connection_in_parent_and_child(captured):
    connection.close()
    backend_pid("default")  # opened here
    backend_pid("other")  # opened here
    parent = os.getpid()

    def child() -> Any:
        start = len(captured)
        reports = [queued for queued in process.pending if queued is not watchdog.start]  # and its restart
        deferred = (len(reports), len(named(captured[start:], "connection_fork_inherited")))
        conntrace.live()  # a safe point: the queued reports go out
        return {"deferred": deferred, "events": events_since(captured, start), "pid": os.getpid()}

    children = [in_child(child), in_child(child)]

    at_fork = named(captured, "connection_open_at_fork")
    assert len(at_fork) == 2  # 2 open connections, reported at the first fork; the second is counted
    assert {e["alias"] for e in at_fork} == {"default", "other"}
    for event in at_fork:
        assert event["log_level"] == "warning"
        assert event["pid"] == parent
        assert_names_this_test(event)
        assert event["forked_in"].startswith("tests/test_forking.py:")
        assert event["policy"] == "reset"
        assert "preflight" in event["hint"]
    for result in children:
        # Queued by the hook, not emitted from it.
        assert result["deferred"] == [2, 0]
        inherited = named(result["events"], "connection_fork_inherited")
        assert len(inherited) == 2
        conn_ids = {e["alias"]: e["conn_id"] for e in at_fork}
        for event in inherited:
            assert event["log_level"] == "warning"  # "reset" healed the child
            assert event["fork_noticed"] == "at_fork_hook"
            assert event["parent_pid"] == parent
            assert event["pid"] == result["pid"] != parent
            assert event["opened_by_pid"] == parent
            assert event["conn_id"] == conn_ids[event["alias"]]
            assert_names_this_test(event)
            assert event["policy"] == "reset"
        assert not named(result["events"], "connection_inherited_used")
    fork_reports.report_repeats()  # what the parent says at exit
    [repeated] = named(captured, "conntrace_reports_repeated")
    assert repeated["log_level"] == "info"
    assert sorted((r["alias"], r["count"]) for r in repeated["repeats"]) == [("default", 1), ("other", 1)]


def test_a_closed_connection_does_not_cross_and_nothing_is_reported(captured):
    backend_pid()
    connections.close_all()
    start = len(captured)

    def child() -> Any:
        conntrace.live()
        return events_since(captured, start)

    assert in_child(child) == []
    assert not named(captured, "connection_open_at_fork")


# --------------------------------------------------------------------------- reset


@pytest.mark.drivers
@pytest.mark.parametrize("how", FORK_WAYS)
def test_reset_child_opens_its_own_session_and_the_parents_answers_after(how, captured):
    connection.close()
    before = backend_pid()
    driver_connection = connection.connection

    def child() -> Any:
        closed_first = connection.connection is None
        connection.close()
        connections.close_all()
        mine = backend_pid()
        connections.close_all()
        return {"closed_first": closed_first, "mine": mine}

    results = [in_child(child, how) for _ in range(3)]
    for result in results:
        assert result["closed_first"] is True
        assert result["mine"] != before
    assert connection.connection is driver_connection
    assert backend_pid() == before
    assert not named(captured, "connection_double_close")


@pytest.mark.drivers
def test_reset_detaches_the_socket_so_even_a_raw_driver_close_in_the_child_cannot_reach_the_parent():
    connection.close()
    before = backend_pid()
    raw = connection.connection  # the driver connection itself, as code that stashed it would hold it

    def child() -> Any:
        raw.close()  # libpq sends Terminate: to /dev/null, where the reset pointed the socket
        return raw.closed

    assert in_child(child) in (True, 1)
    time.sleep(0.1)
    assert backend_pid() == before


def use(alias: str = "default") -> Any:
    return backend_pid(alias)


def close_then_use(alias: str = "default") -> Any:
    connections[alias].close()
    return backend_pid(alias)


def connect_another_alias_then_use(alias: str = "default") -> Any:
    connections["other"].ensure_connection()
    return backend_pid(alias)


@pytest.mark.parametrize(
    ("first_touch", "noticed"),
    [(use, "at_use"), (close_then_use, "at_close"), (connect_another_alias_then_use, "at_connect")],
    ids=["cursor", "close", "connect"],
)
def test_a_fork_nobody_told_python_about_is_noticed_before_the_shared_socket_is_touched(
    first_touch, noticed, captured
):
    """uWSGI without --py-call-osafterfork forks from C and runs none of Python's at-fork hooks.

    Reproduced for real: libc's fork() through ctypes, and nothing else; the child
    notices its new process id at its first connect, new cursor or close.
    """
    connections["other"].close()
    before = backend_pid()
    parent = os.getpid()
    start = len(captured)

    def child() -> Any:
        return {"mine": first_touch(), "events": events_since(captured, start), "pid": os.getpid()}

    result = in_child(child, "libc-untold")
    assert result["mine"] != before
    [inherited] = named(result["events"], "connection_fork_inherited")
    assert inherited["fork_noticed"] == noticed
    assert inherited["policy"] == "reset"
    assert inherited["log_level"] == "warning"
    assert inherited["opened_in"].endswith(" in backend_pid")
    assert inherited["opened_by_pid"] == inherited["parent_pid"] == parent != result["pid"]
    assert not named(captured, "connection_open_at_fork")  # the parent was not told: nothing to report
    assert backend_pid() == before  # the parent's session survived


def test_reset_sqlite_child_writes_with_its_own_connection(captured):
    lite = connections["lite"]
    with lite.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS forked (pid integer)")
        cursor.execute("INSERT INTO forked VALUES (%s)", [os.getpid()])
    driver_connection = lite.connection

    def child() -> Any:
        fresh = lite.connection is None
        with lite.cursor() as cursor:
            cursor.execute("INSERT INTO forked VALUES (%s)", [os.getpid()])
        lite.close()
        return fresh

    assert [in_child(child, how) for how in FORK_WAYS] == [True, True]
    assert lite.connection is driver_connection
    with lite.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM forked")
        assert cursor.fetchone()[0] == 3
        cursor.execute("DROP TABLE forked")


# --------------------------------------------------------------------------- the failure, without the reset


@pytest.mark.drivers
@pytest.mark.parametrize("setup", ["uninstalled", "warn"])
def test_without_reset_a_childs_close_ends_the_parents_session(setup, settings, captured):
    """The check the reset tests rely on can fail: here it does, as it would without conntrace."""
    if setup == "uninstalled":
        conntrace.uninstall()
    else:
        settings.CONNTRACE = {"FORK_POLICY": "warn"}
    connection.close()
    backend_pid()
    start = len(captured)

    def child() -> Any:
        connection.close()
        return events_since(captured, start)

    child_events = in_child(child)
    time.sleep(0.1)  # the server ends the session when it reads the child's Terminate
    with pytest.raises(OperationalError):
        backend_pid()
    connection.close()
    if setup == "warn":
        [inherited] = named(child_events, "connection_fork_inherited")
        assert inherited["policy"] == "warn"
        assert inherited["action"].startswith("left in place")
        [double] = named(captured, "connection_double_close")
        assert double["closed_by"] == "server_or_forked_child"


def test_warn_reports_the_childs_use_of_the_shared_session(settings, captured):
    settings.CONNTRACE = {"FORK_POLICY": "warn"}
    connection.close()
    before = backend_pid()
    start = len(captured)

    def child() -> Any:
        shared = backend_pid()
        backend_pid()  # reported once only
        return {"shared": shared, "events": events_since(captured, start)}

    result = in_child(child)
    assert result["shared"] == before
    [used] = named(result["events"], "connection_inherited_used")
    assert used["log_level"] == "warning"
    assert used["policy"] == "warn"
    assert backend_pid() == before


# --------------------------------------------------------------------------- raise


@pytest.mark.drivers
@pytest.mark.parametrize("how", FORK_WAYS)
def test_raise_first_use_raises_naming_where_it_was_opened(how, settings, captured):
    settings.CONNTRACE = {"FORK_POLICY": "raise"}
    connection.close()
    before = backend_pid()
    [record] = [r for r in conntrace.live() if r["alias"] == "default"]

    def child() -> Any:
        try:
            backend_pid()
        except InheritedConnectionError as exc:
            error = str(exc)
        else:
            error = None
        return {"error": error, "second": backend_pid()}

    result = in_child(child, how)
    assert result["error"] is not None
    assert record["opened_in"] in result["error"]
    assert f"opened by process {os.getpid()}" in result["error"]
    assert result["second"] != before
    assert backend_pid() == before


def test_raise_lets_a_child_close_the_inherited_connection_first(settings):
    settings.CONNTRACE = {"FORK_POLICY": "raise"}
    connection.close()
    before = backend_pid()

    def child() -> Any:
        connection.close()
        return backend_pid()

    mine = in_child(child)
    assert isinstance(mine, int) and mine != before
    assert backend_pid() == before


# --------------------------------------------------------------------------- children that exit normally


def run_scenario(tmp_path: Path, alias: str) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
    """Run ``tests/e2e/forkscenario.py`` with the reset policy; return its result, stderr and events."""
    out = run_module(
        "tests.e2e.forkscenario",
        alias,
        "reset",
        str(tmp_path),
        python_options=("-W", "always::ResourceWarning"),
    )
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    return json.loads(out.stdout), out.stderr, events


@pytest.mark.parametrize("alias", [pytest.param("default", marks=pytest.mark.drivers), "pooled", "lite"])
def test_parent_session_survives_children_that_close_and_exit_normally(alias, tmp_path):
    result, stderr, events = run_scenario(tmp_path, alias)
    children = result["children"]
    assert len(children) == 8  # 4 actions x (os.fork, multiprocessing)
    assert result["exits"] == [0] * 8
    assert not [child for child in children if "error" in child]
    assert result["same_driver_connection"] is True
    assert "error" not in result
    if alias == "lite":
        assert result["after"] == result["before"] + 1 + 2  # the parent's row, two children's, its own
    else:
        assert result["after"] == result["before"]
        assert all(c["answer"] != result["before"] for c in children if "answer" in c)
    assert "ResourceWarning" not in stderr

    at_fork = [e for e in named(events, "connection_open_at_fork") if not e.get("pooled_idle")]
    inherited = [e for e in named(events, "connection_fork_inherited") if not e.get("pooled_idle")]
    # The parent reports each open connection at its first fork and counts the seven later ones;
    # each child reports once, all but the one multiprocessing child that never touches the
    # database and leaves through os._exit().
    per_fork = 1 if alias == "default" else 2
    assert len(at_fork) == per_fork
    assert len(inherited) == 7 * per_fork
    [repeated] = named(events, "conntrace_reports_repeated")  # at the parent's exit
    counted = {
        r["opened_in"]: r["count"] for r in repeated["repeats"] if r["event"] == "connection_open_at_fork"
    }
    # (A pool's idle sessions last checked out at the same line are counted with it.)
    if alias != "pooled":
        assert [counted[e["opened_in"]] for e in at_fork] == [7] * per_fork
    assert all(counted[e["opened_in"]] >= 7 for e in at_fork)
    assert {e["pid"] for e in inherited} <= {c["pid"] for c in children}
    if alias == "pooled":
        idle_at_fork = [e for e in named(events, "connection_open_at_fork") if e.get("pooled_idle")]
        idle_inherited = [e for e in named(events, "connection_fork_inherited") if e.get("pooled_idle")]
        # Every idle session was last checked out at the line of a session reported open: the same
        # problem, counted with it.
        assert idle_at_fork == []
        assert sum(counted.values()) > 7 * per_fork  # (how many are idle at each fork varies)
        assert len(result["idle_before"]) >= 2
        assert 7 * len(result["idle_before"]) <= len(idle_inherited)
        for event in idle_inherited:
            assert event["opened_in"].startswith("tests/e2e/forkscenario.py:")
            assert event["policy"] == "reset"
        assert set(result["idle_before"]) <= set(result["idle_after"])  # the parent's idle sessions answer
        pool_ids = {c["pool_id"] for c in children if "pool_id" in c}
        assert len(pool_ids) == 2 and result["pool_id"] not in pool_ids  # each child built a fresh pool


# --------------------------------------------------------------------------- Django's test runner


class _ForkTwiceFromAPool(unittest.TestCase):
    """Runs inside Django's runner; the pool's second worker is forked by its handler thread."""

    def test_pool(self) -> None:
        with multiprocessing.get_context("fork").Pool(1, maxtasksperchild=1) as pool:
            self.assertEqual(len({pool.apply(os.getpid) for _ in range(2)}), 2)


def test_forks_under_djangos_test_runner_are_reported_as_info_even_from_a_pool_thread(captured, monkeypatch):
    monkeypatch.setattr(fork_reports, "first_time", lambda *key: True)  # report every fork, not once a line
    backend_pid()
    DiscoverRunner(verbosity=0).run_suite(unittest.TestSuite([_ForkTwiceFromAPool("test_pool")]))
    at_fork = named(captured, "connection_open_at_fork")
    assert len(at_fork) >= 2  # the handler thread may start a third worker before the pool ends
    assert {e["thread"] == "MainThread" for e in at_fork} == {True, False}
    for event in at_fork:
        assert event["log_level"] == "info"
        assert event["hint"] == fork_reports.TEST_RUNNER_HINT


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["reset", "warn"])
def test_django_parallel_test_runner(policy, tmp_path):
    """``manage.py test --parallel 2`` passes with reset; with warn its workers end the runner's session."""
    log = tmp_path / "events.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(CONNTRACE_E2E_FORK_POLICY=policy, CONNTRACE_E2E_LOG=str(log), PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "django",
            "test",
            "tests.e2e.parallel_suite",
            "--parallel",
            "2",
            "--noinput",
            "--settings",
            "tests.e2e.clean_settings",
            "--testrunner",
            "tests.e2e.runner.SeedingRunner",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    events = [json.loads(line) for line in log.read_text().splitlines()]
    at_fork = named(events, "connection_open_at_fork")
    inherited = named(events, "connection_fork_inherited")
    assert len(at_fork) == 1  # two workers forked; the runner reports the line once, then counts
    [repeated] = named(events, "conntrace_reports_repeated")
    assert [(r["event"], r["count"]) for r in repeated["repeats"]] == [("connection_open_at_fork", 1)]
    assert all(e["opened_in"].startswith("tests/e2e/runner.py:") for e in at_fork + inherited)
    if policy == "reset":
        assert out.returncode == 0, out.stderr
        assert len(inherited) == 2
        for event in at_fork + inherited:
            assert event["level"] == "info"
            assert event["hint"] == fork_reports.TEST_RUNNER_HINT
        assert not named(events, "connection_double_close")
    else:
        assert out.returncode != 0
        assert "were ended by a worker" in out.stderr
        assert all(e["hint"] == fork_reports.TEST_RUNNER_WARN_HINT for e in at_fork + inherited)
        assert all(e["level"] == "warning" for e in at_fork)
