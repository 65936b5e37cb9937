"""A gunicorn ``--preload`` master that respawns workers reports its import-time session once, not per fork.

The master holds the session the project's import-time query opened
(``tests/e2e/branding/site.py``) and forks 4 sync workers; three of them are
killed (SIGKILL and SIGTERM, as an out-of-memory killer or an operator would)
and the master forks replacements, 7 forks of the same connection in all.
Under ``FORK_POLICY="reset"`` every worker is healed, so nothing is an error:
the master warns once about the line to fix and counts the repeats in one
summary at exit, and each worker says once that it dropped the master's
session. Every process appends to one event file; ``process`` says whose line it is.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests import pgserver
from tests.e2e import client
from tests.e2e import db as e2e_db
from tests.support import children_of, free_port, server_env, stop, wait_for, wait_listening

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 4
KILLS = (signal.SIGKILL, signal.SIGTERM, signal.SIGKILL)
REQUESTS = 120
CONCURRENCY = 8


def respawn(master: int, worker: int, how: signal.Signals) -> int:
    """Kill ``worker`` with ``how``, wait until ``master`` has forked its replacement; return the new pid."""
    before = children_of(master)
    os.kill(worker, how)
    wait_for(
        lambda: worker not in children_of(master) and len(children_of(master)) == WORKERS,
        what=f"gunicorn replacing worker {worker} killed by {how.name}",
    )
    (replacement,) = children_of(master) - before
    return replacement


def test_respawned_workers_are_reported_once_each_and_the_master_once_in_all(tmp_path):
    e2e_db.create()
    events_path = tmp_path / "events.jsonl"
    access_log = tmp_path / "access.log"
    server_log = tmp_path / "gunicorn.log"
    port = free_port()
    env = server_env(
        "tests.e2e.prefork_settings",
        CONNTRACE_E2E_FORK_POLICY="reset",
        CONNTRACE_E2E_LOG=str(events_path),
    )
    command = [
        sys.executable, "-m", "gunicorn", "tests.e2e.wsgi:application",
        "--preload", "--workers", str(WORKERS), "--worker-class", "sync",
        "--bind", f"127.0.0.1:{port}", "--timeout", "10", "--graceful-timeout", "5",
        "--access-logfile", str(access_log), "--access-logformat", "%(p)s %(s)s",
    ]  # fmt: skip
    with open(server_log, "wb") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(port, server, name="gunicorn", output=server_log.read_text)
            master = server.pid
            wait_for(lambda: len(children_of(master)) == WORKERS, what="gunicorn forking its workers")
            workers = children_of(master)
            before = client.load(port, REQUESTS, CONCURRENCY)
            killed = sorted(workers)[: len(KILLS)]
            replacements = {respawn(master, pid, how) for pid, how in zip(killed, KILLS, strict=True)}
            after = client.load(port, REQUESTS, CONCURRENCY)
        finally:
            exit_code = stop(server)
    events = client.read_events(events_path)
    # gunicorn's access log line: "<pid> status" (its %(p)s atom is the worker's pid in angle brackets).
    serving = {int(pid) for pid in re.findall(r"^<(\d+)> 200$", access_log.read_text(), re.MULTILINE)}
    print(f"\nbefore the kills: {dict(before)}, after: {dict(after)}; {len(serving)} workers served")
    print("events:", dict(Counter((e["process"], e["event"], e["level"]) for e in events)))

    assert exit_code == 0
    assert before == after == Counter({client.OK: REQUESTS})
    assert len(replacements) == len(KILLS) and not replacements & workers
    assert pgserver.APP_PASSWORD not in json.dumps(events)

    # Every worker was healed: nothing any process said is an error.
    assert [e for e in events if e["level"] == "error"] == []

    # The master names the line to fix once, at the first fork, not at each of the 7.
    at_fork = client.by_process(events, "connection_open_at_fork")
    assert list(at_fork) == [master]
    (warning,) = at_fork[master]
    assert warning["level"] == "warning"
    assert warning["opened_in"] == client.IMPORT_TIME_LINE

    # Each worker, first or respawned, reports the session it dropped at most once (a worker
    # killed by SIGKILL before its first request never gets to), and every one that served did.
    inherited = client.by_process(events, "connection_fork_inherited")
    assert serving <= set(inherited) <= workers | replacements
    for reports in inherited.values():
        assert len(reports) == 1, reports
        (report,) = reports
        assert report["level"] == "warning"
        assert report["opened_in"] == client.IMPORT_TIME_LINE
        assert report["opened_by_pid"] == report["parent_pid"] == master
        assert report["fork_noticed"] == "at_fork_hook"

    # At shutdown the master sums up what it did not repeat: 6 more forks of the same line.
    repeated = client.by_process(events, "conntrace_reports_repeated")
    assert list(repeated) == [master]
    (summary,) = repeated[master]
    assert summary["level"] == "info"
    assert summary["repeats"] == [
        {
            "event": "connection_open_at_fork",
            "alias": "default",
            "opened_in": client.IMPORT_TIME_LINE,
            "count": WORKERS + len(KILLS) - 1,
        }
    ]
