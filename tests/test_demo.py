"""The demo project (``demo/``): under gunicorn on PostgreSQL, ``run-gunicorn.sh``, its DATABASE_URL parser.

The demo runs with its own commands and settings, in this interpreter (``demo_env`` in
``tests/support.py``); ``tests/test_browser.py`` looks at its panel in a browser.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests import pgserver
from tests.support import DEMO, demo_env, free_port, wait_listening
from tests.toolbar import REQUEST_END, closes


def get(port: int, path_info: str) -> tuple[int, dict[str, str], str]:
    """Request a page of the demo served on ``port``; return (status, headers, body)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path_info}", timeout=20) as response:
        return response.status, dict(response.headers), response.read().decode()


@pytest.fixture
def demo_database(pg: pgserver.PostgresServer) -> Iterator[str]:
    """Give the name of a new, empty database owned by the application's role (dropped afterwards)."""
    name = f"conntrace_demo_{os.getpid()}"
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    pg.psql(f"CREATE DATABASE {name} OWNER {pgserver.APP_USER}")
    yield name
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def stored_in_postgres(pg: pgserver.PostgresServer, database: str, request_id: str) -> dict[str, Any]:
    """Read the panel's stats straight from the toolbar's DatabaseStore table, once the request has ended."""
    deadline = time.monotonic() + 10
    while True:
        raw = pg.psql(
            f"SELECT data FROM debug_toolbar_historyentry WHERE request_id = '{request_id}'", database
        )
        data = json.loads(raw) if raw.strip() else {}
        stats = json.loads(data["ConnectionsPanel"]) if "ConnectionsPanel" in data else {}
        if stats.get("request_end") == "seen" or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.postgres
def test_gunicorn_workers_store_the_request_end_close_where_history_finds_it(pg, demo_database, tmp_path):
    """The demo on PostgreSQL: gunicorn --preload, 2 workers, DatabaseStore, the import-time query on."""
    _, port = pgserver.ensure()
    url = f"postgres://{pgserver.APP_USER}:{pgserver.APP_PASSWORD}@127.0.0.1:{port}/{demo_database}"
    env = demo_env(
        DATABASE_URL=url,
        DEMO_TOOLBAR_STORE="db",
        DEMO_IMPORT_TIME_QUERY="1",
        DEMO_LOG_FORMAT="json",
        DEMO_LOG_LEVEL="info",
    )
    # The demo's own set-up (DEMO_PYTHON: this environment, no virtualenv): it says where, then migrates.
    setup = subprocess.run(
        ["bash", str(DEMO / "run.sh")],
        env={**env, "DEMO_SETUP_ONLY": "1"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert setup.returncode == 0, setup.stderr
    assert f"== database: PostgreSQL database {demo_database!r} on 127.0.0.1:{port}" in setup.stdout
    assert pgserver.APP_PASSWORD not in setup.stdout + setup.stderr
    web_port = free_port()
    out_path, err_path = tmp_path / "gunicorn.out", tmp_path / "gunicorn.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "demosite.wsgi", "--preload", "--workers", "2",
             "--bind", f"127.0.0.1:{web_port}", "--graceful-timeout", "5"],
            cwd=DEMO, env=env, stdout=out, stderr=err,
        )  # fmt: skip
        try:
            wait_listening(web_port, server, name="gunicorn", output=err_path.read_text)
            with ThreadPoolExecutor(4) as pool:
                responses = list(pool.map(lambda _: get(web_port, "/normal/"), range(8)))
            assert [status for status, _, _ in responses] == [200] * 8
            request_ids = [headers["djdt-request-id"] for _, headers, _ in responses]
            all_stats = [stored_in_postgres(pg, demo_database, rid) for rid in request_ids]
            history = json.loads(
                get(
                    web_port, f"/__debug__/history_sidebar/?request_id={request_ids[0]}&exclude_history=True"
                )[2]
            )
            content = json.loads(
                get(
                    web_port,
                    f"/__debug__/render_panel/?request_id={request_ids[-1]}&panel_id=ConnectionsPanel",
                )[2]
            )["content"]
            # Every request-end close happened; what stays open is the master's import-time connection.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                sessions = pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{demo_database}'")
                if sessions.strip() == "1":
                    break
                time.sleep(0.1)
            assert sessions.strip() == "1"
        finally:
            server.terminate()
            server.wait(20)
    worker_pids = set()
    for stats in all_stats:
        assert stats["request_end"] == "seen"
        [entry] = stats["connections"]  # the DatabaseStore's own writes show no row
        assert (entry["alias"], entry["vendor"], entry["origin"]) == ("default", "postgresql", "toolbar")
        assert isinstance(entry["backend_pid"], int)
        assert closes(entry) == [("closed", "at request end", REQUEST_END)]
        assert stats["others"] == []
        facts = stats["process"]
        assert (facts["forked_child"], facts["parent_pid"], facts["fork_policy"]) == (
            True,
            server.pid,
            "reset",
        )
        assert (facts["inherited_held"], facts["inherited_discarded"]) == (0, 1)
        worker_pids.add(facts["pid"])
    # Concurrent requests kept both workers busy: each stored its own requests' stats.
    assert len(worker_pids) == 2 and server.pid not in worker_pids
    assert "1 opened · 0 reused · 0 warnings" in history["ConnectionsPanel"]["button"]
    assert "at request end" in content and "backend PID (behind pgbouncer" in content
    events = [json.loads(line) for line in out_path.read_text().splitlines() if line.startswith("{")]
    at_fork = [e for e in events if e["event"] == "connection_open_at_fork"]
    inherited = [e for e in events if e["event"] == "connection_fork_inherited"]
    assert len(at_fork) == 1  # the master reports the line once for its two workers
    assert {e["pid"] for e in at_fork} == {server.pid}
    assert all(
        e["opened_in"].startswith("shop/featured.py:") and e["opened_in"].endswith(" in _site_name")
        for e in at_fork
    )
    assert inherited and {e["opened_by_pid"] for e in inherited} == {server.pid}
    assert server.pid not in {e["pid"] for e in inherited}
    for text in (out_path.read_text(), err_path.read_text(), content, json.dumps(all_stats)):
        assert pgserver.APP_PASSWORD not in text


@pytest.mark.slow
def test_run_gunicorn_script_prints_the_fork_diagnosis(tmp_path):
    """The README's second entry, ``demo/run-gunicorn.sh``, on SQLite: events name the import-time query."""
    env = demo_env(
        DEMO_PORT=str(free_port()), DEMO_WORKERS="2", DEMO_SQLITE_PATH=str(tmp_path / "demo.sqlite3")
    )
    run = subprocess.run(
        ["bash", str(DEMO / "run-gunicorn.sh")], env=env, capture_output=True, text=True, timeout=180
    )
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    at_fork = [e for e in events if e["event"] == "connection_open_at_fork"]
    inherited = [e for e in events if e["event"] == "connection_fork_inherited"]
    assert len(at_fork) == 1  # reported by the master once, for its two workers
    assert {e["level"] for e in at_fork} == {"warning"}
    assert {e["level"] for e in inherited} == {"warning"}  # "reset" healed each worker
    master = at_fork[0]["pid"]
    assert all(e["opened_in"].startswith("shop/featured.py:") for e in at_fork + inherited)
    assert inherited and {e["opened_by_pid"] for e in inherited} == {master}
    assert "== GET /normal/ -> 200" in run.stdout + run.stderr
    assert "== summary" in run.stdout


def test_database_url_is_parsed_and_described_without_the_password():
    spec = importlib.util.spec_from_file_location("demo_dburl", DEMO / "demosite" / "dburl.py")
    dburl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dburl)
    entry = dburl.parse("postgres://app:p%40ss%3Aw0rd@db.example:6432/shop?sslmode=require")
    assert entry == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "shop",
        "USER": "app",
        "PASSWORD": "p@ss:w0rd",
        "HOST": "db.example",
        "PORT": "6432",
        "OPTIONS": {"sslmode": "require"},
    }
    assert dburl.describe(entry) == "PostgreSQL database 'shop' on db.example:6432 as 'app'"
    socket_entry = dburl.parse("postgresql:///shop?host=/run/postgresql")
    assert (socket_entry["HOST"], socket_entry["PORT"], socket_entry["OPTIONS"]) == (
        "/run/postgresql",
        "",
        {},
    )
    assert dburl.parse("sqlite:////tmp/demo.sqlite3")["NAME"] == "/tmp/demo.sqlite3"
    with pytest.raises(ValueError, match="unsupported scheme"):
        dburl.parse("mysql://app:secret@db/shop")
