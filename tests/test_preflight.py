"""``python -m conntrace preflight`` and ``manage.py conntrace_preflight`` on real projects.

Each run is a fresh interpreter that imports the application the way a
preloading server does, against the test PostgreSQL: the end-to-end project
(``tests/e2e``) reads a ``Setting`` while Django starts, its clean variant does
not, its pooled variant closes its connection but the pool keeps the socket.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import pgserver
from tests.e2e import db as e2e_db

pytestmark = [pytest.mark.postgres]

ROOT = Path(__file__).resolve().parent.parent
IMPORT_TIME_LINE = "tests/e2e/branding/site.py:9 in <module>"


@pytest.fixture(scope="module", autouse=True)
def e2e_database() -> None:
    """Give the end-to-end project its database (the import-time query reads it)."""
    e2e_db.create()


def run(*args: str, command: str = "cli") -> subprocess.CompletedProcess[str]:
    """Run the preflight as a user would, from the project's directory, and check no secret leaks."""
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    if command == "cli":
        argv = [sys.executable, "-m", "conntrace", "preflight", *args]
    else:
        argv = [
            sys.executable,
            "-m",
            "django",
            "conntrace_preflight",
            *args,
            "--settings",
            "tests.e2e.settings",
        ]
        env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert pgserver.APP_PASSWORD not in out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    return out


def test_reports_the_import_time_line_and_exits_1():
    out = run("tests.e2e.wsgi:application")
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert (
        lines[0]
        == "conntrace preflight: importing tests.e2e.wsgi:application left 1 database connection open."
    )
    assert f"  default (postgresql), opened in {IMPORT_TIME_LINE}" in lines
    stack = [line.strip() for line in lines if line.startswith("      ")]
    assert stack == [
        IMPORT_TIME_LINE,
        "tests/e2e/branding/apps.py:9 in BrandingConfig.ready",
        "tests/e2e/wsgi.py:9 in <module>",
    ]
    assert "--preload" in out.stdout and "lazy-apps" in out.stdout


def test_json_output_lists_each_open_connection():
    out = run("tests.e2e.wsgi", "--json")
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert report["target"] == "tests.e2e.wsgi"
    assert report["clean"] is False
    [entry] = report["open_connections"]
    assert entry["alias"] == "default"
    assert entry["vendor"] == "postgresql"
    assert entry["opened_in"] == IMPORT_TIME_LINE
    assert entry["opened_stack"][0] == IMPORT_TIME_LINE
    assert isinstance(entry["backend_pid"], int)
    assert entry["pooled"] is False


def test_clean_project_exits_0():
    out = run("tests.e2e.clean_wsgi:application")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "conntrace preflight: importing tests.e2e.clean_wsgi:application left no database connection open: "
        "safe to preload."
    )
    out = run("tests.e2e.clean_wsgi", "--json")
    assert out.returncode == 0
    assert json.loads(out.stdout) == {"target": "tests.e2e.clean_wsgi", "clean": True, "open_connections": []}


def test_a_connection_closed_into_a_psycopg_pool_is_still_reported():
    out = run("tests.e2e.pool_wsgi", "--json")
    assert out.returncode == 1, out.stderr
    found = json.loads(out.stdout)["open_connections"]
    assert found  # one, or two when the pool's filler thread connected too
    for entry in found:
        assert entry["pooled_idle"] is True
        assert entry["opened_in"] == IMPORT_TIME_LINE


def test_management_command_gives_the_same_report():
    out = run("tests.e2e.wsgi", command="manage.py")
    assert out.returncode == 1, out.stderr
    assert f"  default (postgresql), opened in {IMPORT_TIME_LINE}" in out.stdout.splitlines()
    out = run("tests.e2e.wsgi", "--json", command="manage.py")
    assert out.returncode == 1
    assert [e["opened_in"] for e in json.loads(out.stdout)["open_connections"]] == [IMPORT_TIME_LINE]


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("tests.e2e.no_such_module", "no module named 'tests.e2e.no_such_module'"),
        (
            "tests.e2e.broken_wsgi",
            "importing 'tests.e2e.broken_wsgi' raised ConnectionError: cannot reach "
            "postgresql://conntrace_app:***@127.0.0.1:1/shop (at tests/e2e/broken_wsgi.py:5)",
        ),
        ("tests.e2e.wsgi:no_such_app", "module 'tests.e2e.wsgi' has no attribute 'no_such_app'"),
        ("tests.e2e.db:SITE_NAME", "tests.e2e.db:SITE_NAME is a str, not a WSGI/ASGI application"),
        ("tests.e2e.wsgi:", "'tests.e2e.wsgi:' is not MODULE[:ATTR]"),
    ],
)
def test_a_target_that_cannot_be_loaded_exits_2_with_one_line(target, reason):
    out = run(target)
    assert out.returncode == 2
    assert out.stdout == ""
    [line] = [line for line in out.stderr.splitlines() if line.startswith("conntrace preflight:")]
    assert line.startswith(f"conntrace preflight: {reason}")


def test_json_reports_a_load_failure_too():
    out = run("tests.e2e.no_such_module", "--json")
    assert out.returncode == 2
    assert json.loads(out.stdout)["error"].startswith("no module named")


def test_the_management_command_exits_2_on_a_bad_target():
    out = run("tests.e2e.no_such_module", command="manage.py")
    assert out.returncode == 2
    assert "conntrace preflight: no module named 'tests.e2e.no_such_module'" in out.stderr
