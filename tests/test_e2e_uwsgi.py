"""uWSGI's default mode, end to end: the master imports the project, then forks its workers in C.

uWSGI (pyuwsgi, master and 4 workers, no ``lazy-apps``) runs the project of
``tests/e2e``, whose ``branding`` app reads a ``Setting`` while Django starts:
the master holds that session when it forks, and no Python at-fork hook runs in
the workers. Every request asks PostgreSQL to echo a token of its own and the
body is checked. Without conntrace the workers answer with each other's rows;
with it, uWSGI's post-fork hook tells each worker, which drops the master's
session and opens its own. ``lazy-apps`` (nothing is open in the master) is
silent; ``py-call-osafterfork`` runs Python's at-fork hook in the workers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import pgserver
from tests.e2e import client
from tests.e2e import db as e2e_db
from tests.support import free_port, server_env, stop, wait_listening

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parent.parent
UWSGI = Path(sys.executable).with_name("uwsgi")  # pyuwsgi's command: uWSGI embedding this interpreter
WORKERS = 4
REQUESTS = 400
CONCURRENCY = 32
SERVER_ERROR = re.compile(r"Traceback|Internal Server Error")
FORK_EVENTS = ("connection_open_at_fork", "connection_fork_inherited", "connection_inherited_used")


@pytest.fixture(scope="module")
def project_database() -> Iterator[str]:
    """Give the project's database, with the table it reads at import time, on the test PostgreSQL."""
    yield e2e_db.create()


class UwsgiRun:
    """One uWSGI run under load: what the clients saw, uWSGI's log and conntrace's events."""

    def __init__(self, outcomes: Counter[str], log: str, events: list[dict[str, Any]]) -> None:
        self.outcomes = outcomes
        self.log = log
        self.events = events
        self.failed = REQUESTS - outcomes[client.OK]
        self.server_errors = len(SERVER_ERROR.findall(log))
        self.master_pid = int(re.search(r"spawned uWSGI master process \(pid: (\d+)\)", log).group(1))
        self.worker_pids = {int(p) for p in re.findall(r"spawned uWSGI worker \d+ \(pid: (\d+)", log)}
        # uWSGI's request log: "[pid: 1234|app: 0|req: 1/1] 127.0.0.1 () ... GET /echo/..."
        self.serving_pids = {int(p) for p in re.findall(r"^\[pid: (\d+)\|app", log, re.MULTILINE)}

    def summary(self) -> str:
        return (
            f"{self.failed}/{REQUESTS} requests failed {dict(self.outcomes)}, "
            f"{self.server_errors} errors in the server log, {len(self.serving_pids)} workers served"
        )


def serve_and_load(tmp_path: Path, label: str, *options: str, installed: bool = True) -> UwsgiRun:
    """Run uWSGI's master and 4 workers with ``options``, send the requests, stop it and collect."""
    events_path = tmp_path / f"events-{label}.jsonl"
    log_path = tmp_path / f"uwsgi-{label}.log"
    port = free_port()
    env = server_env(
        "tests.e2e.prefork_settings",
        CONNTRACE_E2E_INSTALLED="1" if installed else "0",
        CONNTRACE_E2E_FORK_POLICY="reset",
        CONNTRACE_E2E_LOG=str(events_path),
    )
    command = [
        str(UWSGI), "--strict", "--master", "--processes", str(WORKERS),
        "--http-socket", f"127.0.0.1:{port}", "--module", "tests.e2e.wsgi:application",
        "--need-app", "--die-on-term", "--worker-reload-mercy", "10", *options,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(port, server, name="uWSGI", output=log_path.read_text)
            outcomes = client.load(port, REQUESTS, CONCURRENCY)
        finally:
            stop(server)
    run = UwsgiRun(outcomes, log_path.read_text(errors="replace"), client.read_events(events_path))
    print(f"\nuWSGI {label}: {run.summary()}")
    assert pgserver.APP_PASSWORD not in run.log + json.dumps(run.events)
    return run


def assert_each_worker_healed_once(run: UwsgiRun, fork_noticed: str) -> None:
    """Check that every worker that served dropped the master's session, and said so once, as a warning."""
    assert run.outcomes == Counter({client.OK: REQUESTS}), run.summary()
    assert run.server_errors == 0
    assert len(run.worker_pids) == WORKERS
    inherited = client.by_process(run.events, "connection_fork_inherited")
    assert run.serving_pids <= set(inherited) <= run.worker_pids
    for pid, reports in inherited.items():
        assert len(reports) == 1, reports
        (report,) = reports
        assert report["level"] == "warning"
        assert report["pid"] == pid
        assert report["opened_in"] == client.IMPORT_TIME_LINE
        assert report["opened_by_pid"] == report["parent_pid"] == run.master_pid
        assert report["policy"] == "reset"
        assert report["fork_noticed"] == fork_noticed
        assert report["action"]
        assert "docs/fork-safety.md#" in report["hint"]
    assert [e for e in run.events if e["level"] == "error"] == []
    assert client.by_process(run.events, "connection_inherited_used") == {}


def test_without_conntrace_the_workers_answer_with_each_others_rows(project_database, tmp_path):
    run = serve_and_load(tmp_path, "without-conntrace", installed=False)
    assert run.failed > 0
    assert run.outcomes[client.WRONG_BODY] > 0  # silently: status 200, another request's row
    assert run.events == []


def test_reset_gives_each_worker_its_own_session_when_uwsgi_says_it_forked(project_database, tmp_path):
    run = serve_and_load(tmp_path, "reset")
    assert_each_worker_healed_once(run, fork_noticed="uwsgi_post_fork")


def test_python_at_fork_hook_tells_the_workers_under_py_call_osafterfork(project_database, tmp_path):
    run = serve_and_load(tmp_path, "osafterfork", "--py-call-osafterfork")
    assert_each_worker_healed_once(run, fork_noticed="at_fork_hook")


def test_lazy_apps_open_nothing_in_the_master_so_nothing_is_reported(project_database, tmp_path):
    run = serve_and_load(tmp_path, "lazy-apps", "--lazy-apps")
    assert run.outcomes == Counter({client.OK: REQUESTS}), run.summary()
    assert run.server_errors == 0
    assert [e for e in run.events if e["event"] in FORK_EVENTS] == []
    assert [e for e in run.events if e["level"] == "error"] == []
