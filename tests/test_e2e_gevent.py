"""gunicorn's gevent worker, end to end: every request's connection is left to the garbage collector.

Under gevent each request runs in a greenlet of its own, and Django's
connections are greenlet-local, so with ``CONN_MAX_AGE`` every request opens a
connection that outlives its greenlet (``tests/e2e/geventapp``: psycopg2 made
cooperative by psycogreen, 1 worker). 500 requests, 50 at a time, each check
their own answer; after each 100, ``/collect/`` runs the garbage collector until
the requests' greenlets are gone and returns how many connections requests
opened and ``conntrace.live()``. Each
leaked connection is reported once as ``connection_abandoned``, none is left in
``live()``, and the garbage collector's callback never raises, not even for the
connections still uncollected when the worker exits.

Why rounds: left to itself the collector let 268-297 leaked sessions pile up
in 500 requests (measured at /collect/), and the test server refuses clients
past ``max_connections = 300``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import pgserver
from tests.conftest import named
from tests.e2e import client
from tests.e2e import db as e2e_db
from tests.support import free_port, http_get, server_env, source_line, stop, wait_listening

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "conntrace_e2e_gevent"
ROUNDS = 5
REQUESTS_PER_ROUND = 100
REQUESTS = ROUNDS * REQUESTS_PER_ROUND
REQUESTS_LEFT_AT_EXIT = 100  # sent after the last /collect/: still uncollected when the worker exits
CONCURRENCY = 50
LOAD_WITHIN_S = 30
ECHO_LINE = source_line("tests/e2e/shop/views.py", "connection.cursor()", "echo")


@dataclass
class Run:
    """One gunicorn -k gevent run: what the clients saw, /collect/'s answers, the server's log, the events."""

    outcomes: Counter[str]
    collected: list[dict[str, Any]]
    outcomes_after: Counter[str]
    server_log: str
    events: list[dict[str, Any]]

    def up_to_last_collect(self) -> list[dict[str, Any]]:
        """Return the events up to the last /collect/'s ``collected`` event."""
        marks = [i for i, event in enumerate(self.events) if event["event"] == "collected"]
        return self.events[: marks[-1]] if marks else self.events

    def summary(self) -> str:
        last = self.collected[-1] if self.collected else {}
        return (
            f"{dict(self.outcomes)}, {last.get('opened_by_requests')} connections opened by requests, "
            f"{len(named(self.up_to_last_collect(), 'connection_abandoned'))} connection_abandoned; "
            f"in live() before each /collect/ {[c['live_before'] for c in self.collected]}, after "
            f"{[len(requests_live(c)) for c in self.collected]} (gc.collect() found "
            f"{[c['unreachable'] for c in self.collected]}); then {dict(self.outcomes_after)} "
            f"left to the exit: {self.server_log.count('Exception ignored in')} 'Exception ignored in' "
            f"on stderr, {len(named(self.events, 'connection_abandoned'))} connection_abandoned in all"
        )


def requests_live(collected: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the records in /collect/'s ``live()`` of connections that requests opened."""
    return [record for record in collected["live"] if record["opened_in"] == ECHO_LINE]


def serve_and_load(tmp_path: Path) -> Run:
    """Run gunicorn -k gevent: the requests, /collect/, more requests left to the worker's exit; stop it."""
    event_log = tmp_path / "events.jsonl"
    server_log = tmp_path / "gunicorn.log"
    port = free_port()
    env = server_env(
        "tests.e2e.geventapp.settings",
        CONNTRACE_E2E_DBNAME=DATABASE,
        CONNTRACE_E2E_LOG=str(event_log),
    )
    command = [
        sys.executable, "-m", "gunicorn", "tests.e2e.wsgi:application",
        "--config", "python:tests.e2e.geventapp.gunicorn_conf",
        "--bind", f"127.0.0.1:{port}", "--timeout", "30", "--graceful-timeout", "5",
    ]  # fmt: skip
    with open(server_log, "wb") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(
                port, server, name="gunicorn", output=lambda: server_log.read_text(errors="replace")
            )
            outcomes: Counter[str] = Counter()
            collected = []
            for _ in range(ROUNDS):
                outcomes += client.load(port, REQUESTS_PER_ROUND, CONCURRENCY, LOAD_WITHIN_S)
                status, body = http_get(port, "/collect/", timeout=30)
                assert status == 200, body
                collected.append(json.loads(body))
            outcomes_after = client.load(port, REQUESTS_LEFT_AT_EXIT, CONCURRENCY, LOAD_WITHIN_S)
        finally:
            stop(server)
    server_output = server_log.read_text(errors="replace")
    return Run(outcomes, collected, outcomes_after, server_output, client.read_events(event_log))


def test_every_leaked_greenlet_connection_is_reported_once_and_none_stays_live(tmp_path):
    e2e_db.create(DATABASE)
    run = serve_and_load(tmp_path)
    print(f"\ngunicorn -k gevent: {run.summary()}")
    assert run.outcomes == Counter(ok=REQUESTS)
    assert run.outcomes_after == Counter(ok=REQUESTS_LEFT_AT_EXIT)
    opened = run.collected[-1]["opened_by_requests"]
    assert opened == REQUESTS  # one greenlet, so one connection, per request

    # Once their greenlets are gone, every request's connection was collected, and reported exactly
    # once, from its own record.
    assert [collected["greenlets_left"] for collected in run.collected] == [0] * ROUNDS
    assert [requests_live(collected) for collected in run.collected] == [[]] * ROUNDS
    abandoned = named(run.up_to_last_collect(), "connection_abandoned")
    assert len(abandoned) == opened
    assert len({event["conn_id"] for event in abandoned}) == opened
    for event in abandoned:
        assert (event["level"], event["alias"], event["opened_in"]) == ("warning", "default", ECHO_LINE)
    # Nor is any reported again later, when the worker exits with more of them uncollected.
    every_report = Counter(event["conn_id"] for event in named(run.events, "connection_abandoned"))
    assert set(every_report.values()) == {1}

    assert "Exception ignored in" not in run.server_log
    assert "Traceback" not in run.server_log
    assert named(run.events, "conntrace_internal_error") == []
    assert pgserver.APP_PASSWORD not in run.server_log + json.dumps(run.events)
