"""The original bug, end to end: gunicorn --preload, 4 sync workers, pgbouncer, CONN_MAX_AGE.

The project in ``tests/e2e`` reads a ``Setting`` while Django starts, so the
gunicorn master holds a connection when it forks its workers. Every request
asks PostgreSQL to echo a token of its own (after a short ``pg_sleep``, so that
workers' queries overlap) and the body is checked: on a shared session a worker
can answer with another request's row and status 200. Without conntrace, or
with ``FORK_POLICY="warn"``, requests fail; with ``"reset"`` none does.
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
from tests.conftest import named
from tests.e2e import client
from tests.e2e import db as e2e_db
from tests.pgbouncer import PgBouncer
from tests.support import free_port, server_env, stop, wait_listening

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 4
REQUESTS = 400
CONCURRENCY = 16
LOAD_DEADLINE_S = 40
IMPORT_TIME_LINE = client.IMPORT_TIME_LINE
SERVER_ERROR = re.compile(r"Traceback|\[ERROR\]|Internal Server Error|WORKER TIMEOUT")


@pytest.fixture(scope="module")
def bouncer() -> Iterator[PgBouncer]:
    """Give a pgbouncer (session pooling) in front of the test PostgreSQL, and the project's database."""
    e2e_db.create()
    with PgBouncer(pool_mode="session") as running:
        yield running


class Run:
    """One gunicorn run under load: what the clients saw, the server's log and conntrace's events."""

    def __init__(
        self, outcomes: Counter[str], server_log: str, events: list[dict[str, Any]], requests: int = REQUESTS
    ) -> None:
        self.outcomes = outcomes
        self.server_log = server_log
        self.events = events
        self.server_errors = len(SERVER_ERROR.findall(server_log))
        self.requests = requests
        self.failed = requests - outcomes["ok"]
        self.master_pid = int(re.search(r"Listening at: \S+ \((\d+)\)", server_log).group(1))
        self.worker_pids = {int(p) for p in re.findall(r"Booting worker with pid: (\d+)", server_log)}

    def summary(self) -> str:
        return (
            f"{self.failed}/{self.requests} requests failed {dict(self.outcomes)}, "
            f"{self.server_errors} errors in the server log, {len(self.worker_pids)} workers forked"
        )


def serve_and_load(
    bouncer: PgBouncer,
    tmp_path: Path,
    installed: bool,
    policy: str,
    config: str | None = None,
    requests: int = REQUESTS,
    log_dir: Path | None = None,
) -> Run:
    """Run gunicorn with --preload in front of pgbouncer, fire the requests, stop it and collect.

    With ``log_dir``, every process also writes its events there, one file per process, debug included.
    """
    label = f"{'on' if installed else 'off'}-{policy}{'-conf' if config else ''}"
    event_log = tmp_path / f"events-{label}.jsonl"
    server_log = tmp_path / f"gunicorn-{label}.log"
    port = free_port()
    env = server_env(
        "tests.e2e.settings",
        CONNTRACE_E2E_DBHOST=bouncer.host,
        CONNTRACE_E2E_DBPORT=str(bouncer.port),
        CONNTRACE_E2E_INSTALLED="1" if installed else "0",
        CONNTRACE_E2E_FORK_POLICY=policy,
        CONNTRACE_E2E_LOG=str(event_log),
        CONNTRACE_E2E_WATCHDOG_INTERVAL_S="0.05",  # looks 20 times a second in every worker
        **({"CONNTRACE_E2E_LOG_DIR": str(log_dir)} if log_dir else {}),
    )
    command = [
        sys.executable, "-m", "gunicorn", "tests.e2e.wsgi:application",
        "--preload", "--workers", str(WORKERS), "--worker-class", "sync",
        "--bind", f"127.0.0.1:{port}", "--timeout", "5", "--graceful-timeout", "3",
        *(["--config", config] if config else []),
    ]  # fmt: skip
    with open(server_log, "wb") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(port, server, name="gunicorn")
            outcomes = client.load(port, requests, CONCURRENCY, LOAD_DEADLINE_S)
        finally:
            stop(server)
    events = [json.loads(line) for line in event_log.read_text().splitlines()] if event_log.exists() else []
    return Run(outcomes, server_log.read_text(errors="replace"), events, requests)


def test_preloaded_workers_fail_without_the_reset_and_never_with_it(bouncer, tmp_path):
    without = serve_and_load(bouncer, tmp_path, installed=False, policy="reset")
    warned = serve_and_load(bouncer, tmp_path, installed=True, policy="warn")
    reset = serve_and_load(bouncer, tmp_path, installed=True, policy="reset")
    print(f"\nwithout conntrace: {without.summary()}")
    print(f"FORK_POLICY warn:  {warned.summary()}")
    print(f"FORK_POLICY reset: {reset.summary()}")
    assert pgserver.APP_PASSWORD not in without.server_log + warned.server_log + reset.server_log

    # The bug is real: requests fail, some of them silently (another request's row, status 200).
    assert without.failed > 0
    assert warned.failed > 0
    assert without.events == []

    # warn names the import-time line at the first fork, in the master, before any worker fails.
    [warn_at_fork] = named(warned.events, "connection_open_at_fork")
    assert len(warned.worker_pids) >= WORKERS
    assert warn_at_fork["pid"] == warned.master_pid
    assert (warn_at_fork["opened_in"], warn_at_fork["level"]) == (IMPORT_TIME_LINE, "warning")

    # reset: no failure at all, one report per worker naming the line, one in the master.
    assert reset.outcomes == Counter(ok=REQUESTS)
    assert reset.server_errors == 0
    assert len(reset.worker_pids) == WORKERS
    at_fork = named(reset.events, "connection_open_at_fork")
    inherited = named(reset.events, "connection_fork_inherited")
    assert len(at_fork) == 1  # the master reports the line once, then counts
    assert {e["pid"] for e in at_fork} == {reset.master_pid}
    assert sorted(e["pid"] for e in inherited) == sorted(reset.worker_pids)
    for event in at_fork + inherited:
        assert event["opened_in"] == IMPORT_TIME_LINE
        assert event["opened_by_pid"] == reset.master_pid
    for event in inherited:
        assert event["level"] == "warning"  # the worker is healed: nothing at error level
        assert event["policy"] == "reset"
        assert event["fork_noticed"] == "at_fork_hook"
    assert "Setting.objects.get" in (ROOT / "tests/e2e/branding/site.py").read_text().splitlines()[8]
    assert not named(reset.events, "connection_double_close")
    assert not named(reset.events, "connection_inherited_used")
    # Normal requests hold nothing long, whatever the watchdog's pace; WSGI is not ASGI.
    for event in ("connection_held_long", "asgi_persistent_connections"):
        assert not named(reset.events + warned.events, event)
    assert pgserver.APP_PASSWORD not in json.dumps(reset.events + warned.events)


def test_the_documented_gunicorn_fix_works_without_conntrace(bouncer, tmp_path):
    """The README's pre_fork hook (tests/e2e/gunicorn_conf.py): close connections in the master."""
    fixed = serve_and_load(
        bouncer, tmp_path, installed=False, policy="reset", config="python:tests.e2e.gunicorn_conf"
    )
    print(f"\nwithout conntrace, pre_fork closes: {fixed.summary()}")
    assert fixed.outcomes == Counter(ok=REQUESTS)
    assert fixed.server_errors == 0


def test_preflight_passes_the_documented_fix_and_gunicorn_agrees(bouncer, tmp_path):
    """Preflight with the config exits 0; gunicorn with it forks no connection (FORK_POLICY warn)."""
    config = "python:tests.e2e.gunicorn_conf"
    env = server_env("tests.e2e.settings")
    preflight = [sys.executable, "-m", "conntrace", "preflight", "tests.e2e.wsgi"]
    without = subprocess.run(preflight, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    fixed = subprocess.run(
        [*preflight, "-c", config], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert (without.returncode, fixed.returncode) == (1, 0), fixed.stdout + fixed.stderr

    served = serve_and_load(bouncer, tmp_path, installed=True, policy="warn", config=config)
    print(f"\nFORK_POLICY warn, pre_fork closes: {served.summary()}")
    assert served.outcomes == Counter(ok=REQUESTS)
    assert served.server_errors == 0
    assert len(served.worker_pids) == WORKERS
    for event in ("connection_open_at_fork", "connection_fork_inherited", "connection_inherited_used"):
        assert not named(served.events, event)
