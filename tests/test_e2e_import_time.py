"""Which import-time query a preloading server runs in its master, verified on gunicorn and uWSGI.

The README's example of the bug must be one that really crosses a fork. Django
imports the WSGI module, the settings and every app's ``ready()`` (with what
they import) while the application loads, in the master of gunicorn
``--preload`` and of uWSGI without ``lazy-apps``; it imports the URLconf only
when it first resolves a URL. Each run serves a few requests with 2 workers,
then reads conntrace's events: a query in ``urls.py`` runs in a worker, at its
first request, and crosses no fork; once the WSGI module calls ``reverse()``
at import, the same query runs in the master and every worker inherits its
connection. Preflight says the same before any server runs. Django's system
checks import the URLconf too (its URL checks): whatever runs them before
forking (Celery's Django fixup, unless ``CELERY_SKIP_CHECKS``) holds that
query's connection in the parent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import named
from tests.e2e import client
from tests.e2e import db as e2e_db
from tests.support import free_port, server_env, source_line, stop, wait_listening

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parent.parent
UWSGI = Path(sys.executable).with_name("uwsgi")
URLCONF_LINE = source_line("tests/e2e/urlconf_query.py", "Setting.objects.get", "<module>")
REQUESTS = 8
SETTINGS = "tests.e2e.urlconf_settings"


@pytest.fixture(scope="module", autouse=True)
def project_database() -> None:
    e2e_db.create()


def serve(tmp_path: Path, server: str, wsgi: str) -> list[dict]:
    """Run ``server`` (gunicorn --preload or uWSGI's default mode) with 2 workers; return the events."""
    events_path = tmp_path / f"events-{server}-{wsgi}.jsonl"
    log_path = tmp_path / f"{server}-{wsgi}.log"
    port = free_port()
    env = server_env(SETTINGS, CONNTRACE_E2E_LOG=str(events_path))
    if server == "gunicorn":
        command = [
            sys.executable, "-m", "gunicorn", f"{wsgi}:application", "--preload", "--workers", "2",
            "--bind", f"127.0.0.1:{port}", "--timeout", "10",
        ]  # fmt: skip
    else:
        command = [
            str(UWSGI), "--strict", "--master", "--processes", "2", "--http-socket", f"127.0.0.1:{port}",
            "--module", f"{wsgi}:application", "--need-app", "--die-on-term",
        ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(port, process, name=server, output=log_path.read_text)
            answers = [client.get(port, "/count/") for _ in range(REQUESTS)]
        finally:
            stop(process)
    assert answers == [(200, "1")] * REQUESTS, log_path.read_text()
    return client.read_events(events_path)


def preflight(wsgi: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "conntrace", "preflight", f"{wsgi}:application"]
    env = server_env(SETTINGS)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("server", ["gunicorn", "uwsgi"])
def test_a_query_in_urls_py_runs_in_each_worker_and_crosses_no_fork(tmp_path, server):
    events = serve(tmp_path, server, "tests.e2e.clean_wsgi")
    assert named(events, "connection_open_at_fork") == []
    assert named(events, "connection_fork_inherited") == []
    assert preflight("tests.e2e.clean_wsgi").returncode == 0


@pytest.mark.parametrize("server", ["gunicorn", "uwsgi"])
def test_reverse_at_import_brings_the_urls_py_query_into_the_master(tmp_path, server):
    events = serve(tmp_path, server, "tests.e2e.reverse_wsgi")
    inherited = named(events, "connection_fork_inherited")
    assert inherited, "no worker inherited the master's connection"
    assert {event["opened_in"] for event in inherited} == {URLCONF_LINE}
    out = preflight("tests.e2e.reverse_wsgi")
    assert out.returncode == 1, out.stderr
    assert f"  default (postgresql), opened in {URLCONF_LINE}" in out.stdout.splitlines()


RUN_CHECKS = """\
import json, django
django.setup()
from django.core.checks import run_checks
import conntrace
before = [c["opened_in"] for c in conntrace.live()]
run_checks()
print(json.dumps({"before": before, "after": [c["opened_in"] for c in conntrace.live()]}))
"""


def test_system_checks_import_urls_py_and_run_its_query():
    env = server_env(SETTINGS)
    out = subprocess.run(
        [sys.executable, "-c", RUN_CHECKS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == {"before": [], "after": [URLCONF_LINE]}
