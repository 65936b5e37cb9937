"""Metrics end to end: gunicorn workers export through the OpenTelemetry SDK, a real Prometheus scrapes them.

gunicorn runs the end-to-end project with ``--preload`` and two sync workers:
Django's import-time query (``tests/e2e/branding``) leaves the master holding a
connection when it forks, so each worker inherits one (``FORK_POLICY``
"reset" discards it: a ``connection_fork_inherited`` anomaly) and opens its
own. Each worker serves its own ``/metrics`` (``tests/e2e/metrics_gunicorn_conf.py``);
Prometheus (its own configuration and storage in a temporary directory)
scrapes both every second, and the test reads the numbers back through
Prometheus's HTTP API after a scripted load, and while one request holds
its connection.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests import pgserver
from tests.e2e import client
from tests.e2e import db as e2e_db
from tests.support import free_port, server_env, stop, wait_for, wait_listening

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = "/usr/bin/prometheus"
WORKERS = 2
REQUESTS = 60
CONCURRENCY = 4
BY_STATE = "sum by (db_client_connection_state) (db_client_connection_count)"
BY_EVENT = "sum by (conntrace_event) (conntrace_connection_anomalies_total)"
# After the load each worker holds its one persistent connection, between requests: idle.
TWO_IDLE = {'{"db_client_connection_state": "idle"}': 2.0, '{"db_client_connection_state": "used"}': 0.0}
# While one request sleeps in PostgreSQL, its worker's connection is used.
ONE_USED = {'{"db_client_connection_state": "idle"}': 1.0, '{"db_client_connection_state": "used"}': 1.0}
HOLD_S = 5
# Each worker inherited the master's import-time connection, and discarded it.
TWO_INHERITED = {'{"conntrace_event": "connection_fork_inherited"}': 2.0}


def prometheus_config(targets: list[int]) -> str:
    listed = ", ".join(f'"127.0.0.1:{port}"' for port in targets)
    return (
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        f"scrape_configs:\n  - job_name: conntrace\n    static_configs:\n      - targets: [{listed}]\n"
    )


def query(port: int, promql: str) -> dict[str, float]:
    """Return {the series' labels as JSON: value} of an instant PromQL query."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return {
        json.dumps(series["metric"], sort_keys=True): float(series["value"][1])
        for series in answer["data"]["result"]
    }


def settled(port: int, promql: str, expected: dict[str, float], timeout: float = 20) -> dict[str, float]:
    """Return the query's answer once it equals ``expected`` (or the last one, after ``timeout`` s)."""
    last: dict[str, Any] = {}

    def matches() -> bool:
        last.update(answer=query(port, promql))
        return last["answer"] == expected

    try:
        wait_for(matches, timeout, what=promql)
    except TimeoutError:
        pass
    return last["answer"]


def test_prometheus_scrapes_each_workers_connections_and_anomalies(tmp_path):
    e2e_db.create()
    app_port, prometheus_port = free_port(), free_port()
    metrics_ports = [free_port() for _ in range(WORKERS)]
    (tmp_path / "prometheus.yml").write_text(prometheus_config(metrics_ports))
    env = server_env(
        "tests.e2e.metrics_settings",
        CONNTRACE_E2E_METRICS_PORTS=",".join(map(str, metrics_ports)),
        CONNTRACE_E2E_LOG=str(tmp_path / "events.jsonl"),
    )
    gunicorn = [
        sys.executable, "-m", "gunicorn", "tests.e2e.wsgi:application",
        "--preload", "--workers", str(WORKERS), "--worker-class", "sync",
        "--config", "python:tests.e2e.metrics_gunicorn_conf",
        "--bind", f"127.0.0.1:{app_port}", "--timeout", "10", "--graceful-timeout", "3",
    ]  # fmt: skip
    prometheus = [
        PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prometheus_port}",
    ]  # fmt: skip
    with open(tmp_path / "gunicorn.log", "wb") as log, open(tmp_path / "prometheus.log", "wb") as plog:
        server = subprocess.Popen(gunicorn, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        scraper = subprocess.Popen(prometheus, cwd=tmp_path, stdout=plog, stderr=subprocess.STDOUT)
        try:
            wait_listening(app_port, server, name="gunicorn")
            for port in metrics_ports:
                wait_listening(port, server, name="a worker's /metrics")
            wait_listening(prometheus_port, scraper, name="prometheus")
            outcomes = client.load(app_port, REQUESTS, CONCURRENCY, within_s=30)
            states = settled(prometheus_port, BY_STATE, TWO_IDLE)
            anomalies = settled(prometheus_port, BY_EVENT, TWO_INHERITED)
            holder = threading.Thread(target=client.get, args=(app_port, f"/hold/{HOLD_S}/"))
            holder.start()
            while_held = settled(prometheus_port, BY_STATE, ONE_USED, timeout=HOLD_S)
            holder.join()
            after = settled(prometheus_port, BY_STATE, TWO_IDLE)
            per_worker = query(prometheus_port, "db_client_connection_count")
            opened = query(prometheus_port, "sum(db_client_connection_create_time_seconds_count)")
        finally:
            stop(scraper)
            stop(server)
    server_log = (tmp_path / "gunicorn.log").read_text(errors="replace")
    assert outcomes == Counter(ok=REQUESTS), server_log
    assert "Traceback" not in server_log
    assert states == TWO_IDLE
    assert anomalies == TWO_INHERITED
    assert while_held == ONE_USED
    assert after == TWO_IDLE
    assert list(opened.values()) == [2.0]  # one connect per worker: the connection persists
    pools = {json.loads(labels)["db_client_connection_pool_name"] for labels in per_worker}
    settings_host, settings_port = pgserver.ensure()
    assert pools == {f"default/{settings_host}:{settings_port}/conntrace_e2e"}
    assert {json.loads(labels)["instance"] for labels in per_worker} == {
        f"127.0.0.1:{port}" for port in metrics_ports
    }
    assert pgserver.APP_PASSWORD not in json.dumps(per_worker)
