"""``CONNTRACE["LIVE_SIGNAL"]``: a signal makes a running process log what it holds, as one event.

The end-to-end tests send the signal with ``os.kill``: to a fresh Django process
(``tests/e2e/livescenario.py``) whose two threads hold connections while its
main thread logs in a loop through the same file logger, and to the master and
workers of gunicorn ``--preload``. The others install, remove and refuse the
handler in this process, where the tests run in the main thread.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog
from django.db import connection

import conntrace
from conntrace import events, live_signal
from tests import pgserver
from tests.conftest import named, unstamped
from tests.e2e import client
from tests.e2e import db as e2e_db
from tests.support import (
    REPO,
    children_of,
    free_port,
    server_env,
    source_line,
    stop,
    wait_for,
    wait_listening,
)

SCENARIO = "tests/e2e/livescenario.py"
SIGNALS_SENT = 5


def live_events(out_dir: Path) -> list[dict]:
    path = out_dir / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [event for event in map(json.loads, lines) if event["event"] == "connections_live"]


@pytest.mark.postgres
def test_the_signal_logs_the_connections_each_thread_holds(pg, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    command = [sys.executable, "-m", "tests.e2e.livescenario", str(tmp_path)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    scenario = subprocess.Popen(command, cwd=REPO, env=env, **pipes)
    try:
        ready = json.loads(scenario.stdout.readline())
        for sent in range(1, SIGNALS_SENT + 1):
            os.kill(ready["pid"], signal.SIGUSR2)
            wait_for(lambda n=sent: len(live_events(tmp_path)) >= n, timeout=20, what=f"event #{sent}")
        (tmp_path / "stop").touch()
        out, err = scenario.communicate(timeout=30)
    finally:
        scenario.kill()
        scenario.wait()
    assert scenario.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["stopped"] is True  # it went on logging, and ended on request

    found = live_events(tmp_path)
    assert len(found) == SIGNALS_SENT  # one event per signal
    opening_line = source_line(SCENARIO, "with connection.cursor() as cursor:", "hold")
    for event in found:
        assert {k: event[k] for k in ("level", "pid", "signal", "count")} == {
            "level": "info",
            "pid": ready["pid"],
            "signal": "SIGUSR2",
            "count": 2,
        }
        assert "pools" not in event  # no psycopg pool in this process
        held = sorted(event["connections"], key=lambda c: c["thread"])
        assert [c["thread"] for c in held] == ["holder-1", "holder-2"]
        assert sorted(c["backend_pid"] for c in held) == ready["backend_pids"]
        facts = {(c["state"], c["opened_in"], c["pid"]) for c in held}
        assert facts == {("open", opening_line, ready["pid"])}
    assert pgserver.APP_PASSWORD not in (tmp_path / "events.jsonl").read_text()


@pytest.mark.postgres
def test_under_gunicorn_preload_the_master_and_every_worker_answer(tmp_path):
    """SIGURG, which gunicorn leaves alone (USR2 re-executes its master and kills a preloaded worker)."""
    e2e_db.create()
    log, events_path, port = tmp_path / "gunicorn.log", tmp_path / "events.jsonl", free_port()
    env = server_env(
        "tests.e2e.settings", CONNTRACE_E2E_LOG=str(events_path), CONNTRACE_E2E_LIVE_SIGNAL="SIGURG"
    )
    command = [
        sys.executable, "-m", "gunicorn", "tests.e2e.wsgi:application", "--preload", "--workers", "2",
        "--bind", f"127.0.0.1:{port}", "--timeout", "10",
    ]  # fmt: skip
    with open(log, "wb") as out:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_listening(port, server, name="gunicorn")

            def booted() -> set[int]:
                return set(map(int, re.findall(r"Booting worker with pid: (\d+)", log.read_text())))

            wait_for(lambda: len(booted()) == 2, timeout=20, what="two workers booted")
            workers = booted()
            for pid in (server.pid, *workers):
                os.kill(pid, signal.SIGURG)

            def answered() -> set[int]:
                return {event["pid"] for event in live_events(tmp_path)}

            # A worker answers once its first request has started its thread (the signal waits till then).
            deadline = time.monotonic() + 20
            while answered() != {server.pid, *workers} and time.monotonic() < deadline:
                client.get(port, "/count/")
            assert answered() == {server.pid, *workers}
            assert all(os.path.exists(f"/proc/{pid}") for pid in workers)  # SIGURG harmed no worker
        finally:
            stop(server)
    by_pid = {event["pid"]: event for event in live_events(tmp_path)}
    master = by_pid[server.pid]
    assert [(c["opened_in"], c["state"]) for c in master["connections"]] == [
        (client.IMPORT_TIME_LINE, "open")
    ]
    for pid in workers:
        # Each worker reports only its own connections: the inherited one was discarded at the fork.
        assert all(c["pid"] == pid for c in by_pid[pid]["connections"])


@pytest.mark.postgres
def test_under_uwsgi_sigurg_harms_nothing_and_a_worker_answers_at_its_next_request(tmp_path):
    """uWSGI's C loop runs no Python between requests: a worker's handler runs at its next request,
    the master's never (it runs no Python after loading the application)."""
    e2e_db.create()
    events_path, port = tmp_path / "events.jsonl", free_port()
    env = server_env(
        "tests.e2e.prefork_settings", CONNTRACE_E2E_LOG=str(events_path), CONNTRACE_E2E_LIVE_SIGNAL="SIGURG"
    )
    command = [
        str(Path(sys.executable).with_name("uwsgi")), "--strict", "--master", "--processes", "2",
        "--http-socket", f"127.0.0.1:{port}", "--module", "tests.e2e.wsgi:application", "--need-app",
        "--die-on-term",
    ]  # fmt: skip
    with open(tmp_path / "uwsgi.log", "wb") as log:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(port, server, name="uWSGI")
            wait_for(lambda: len(children_of(server.pid)) == 2, timeout=20, what="two workers")
            workers = children_of(server.pid)
            for pid in (server.pid, *workers):
                os.kill(pid, signal.SIGURG)
            time.sleep(2)
            unanswered = live_events(tmp_path)
            assert server.poll() is None and children_of(server.pid) == workers  # nobody harmed
            deadline = time.monotonic() + 20
            while {e["pid"] for e in live_events(tmp_path)} != workers and time.monotonic() < deadline:
                client.get(port, "/count/")
        finally:
            stop(server)
    assert unanswered == []  # idle between requests: nothing ran the handler
    assert {event["pid"] for event in live_events(tmp_path)} == workers  # the master: never


@pytest.fixture
def live_signal_setting(settings):
    """Set LIVE_SIGNAL to SIGUSR2 for the test; the handler and the signal's default come back after."""
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
    try:
        yield lambda value: setattr(settings, "CONNTRACE", {"LIVE_SIGNAL": value})
    finally:
        settings.CONNTRACE = {}
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)


def test_installed_by_the_setting_idempotent_and_removed_by_uninstall(live_signal_setting):
    live_signal_setting("SIGUSR2")
    handler = signal.getsignal(signal.SIGUSR2)
    assert live_signal.installed_signal() == signal.SIGUSR2
    assert handler is not signal.SIG_DFL
    conntrace.install()
    live_signal.apply()
    assert signal.getsignal(signal.SIGUSR2) is handler  # a second install changes nothing
    conntrace.uninstall()
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
    assert live_signal.installed_signal() is None
    conntrace.install()
    assert signal.getsignal(signal.SIGUSR2) is handler
    live_signal_setting(None)
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL


def test_the_applications_handler_is_kept_and_the_refusal_said_once(live_signal_setting, captured):
    def applications_handler(signum, frame):
        pass

    signal.signal(signal.SIGUSR2, applications_handler)
    live_signal_setting("SIGUSR2")
    live_signal.remove()
    live_signal.apply()
    assert signal.getsignal(signal.SIGUSR2) is applications_handler
    assert live_signal.installed_signal() is None
    [refused] = unstamped(named(captured, "conntrace_live_signal_refused"))
    assert refused == {
        "event": "conntrace_live_signal_refused",
        "log_level": "warning",
        "signal": "SIGUSR2",
        "reason": "the application already handles it (test_the_applications_handler_is_kept_and_the_refusal_"
        "said_once.<locals>.applications_handler): choose another signal",
    }


@pytest.mark.django_db(transaction=True)
def test_in_this_process_the_event_lists_what_live_returns(live_signal_setting, captured):
    live_signal_setting("SIGUSR2")
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    os.kill(os.getpid(), signal.SIGUSR2)
    wait_for(lambda: named(captured, "connections_live"), timeout=10, what="connections_live")
    [event] = named(captured, "connections_live")
    assert event["log_level"] == "info"
    assert [c["conn_id"] for c in event["connections"]] == [c["conn_id"] for c in conntrace.live()]


@pytest.mark.django_db(transaction=True)
def test_where_only_warnings_are_kept_the_answer_comes_at_warning(live_signal_setting, captured):
    """Production keeps warnings only: an operator's request is answered, not filtered out."""
    wrapper_class = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        live_signal_setting("SIGUSR2")
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        os.kill(os.getpid(), signal.SIGUSR2)
        wait_for(lambda: named(captured, "connections_live"), timeout=10, what="connections_live")
    finally:
        structlog.configure(wrapper_class=wrapper_class)
        events.reset()
    [event] = named(captured, "connections_live")
    assert event["log_level"] == "warning"
    assert [c["conn_id"] for c in event["connections"]] == [c["conn_id"] for c in conntrace.live()]
    assert named(captured, "connection_opened") == []  # debug stays filtered: only the answer is raised
