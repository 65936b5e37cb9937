"""Persistent connections under a real uvicorn: ``asgi_persistent_connections`` once, or nothing.

uvicorn serves the async views (``tests/e2e/asgi.py``) with ``CONN_MAX_AGE``
60, then 0. Under ASGI each of asgiref's executor threads keeps its own
connection when ``CONN_MAX_AGE != 0``: the first request warns once, and
``conntrace.live()`` lists those connections, still open after their requests
(and their threads) ended, with their idle time. With 0 (what Django advises)
nothing is said and nothing stays open.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import named
from tests.e2e import client
from tests.e2e import db as e2e_db
from tests.test_e2e_uvicorn import DATABASE, project_env, serving

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REQUESTS = 12
CONCURRENCY = 4


def serve_some_requests(tmp_path: Path, conn_max_age: int) -> tuple[list[dict[str, Any]], Any, str]:
    """Serve ``REQUESTS`` counts then ``live/``; return the events, its answer and uvicorn's output."""
    e2e_db.create(DATABASE)
    event_log, server_log = tmp_path / "events.jsonl", tmp_path / "uvicorn.log"
    env = project_env(
        "tests.e2e.async_persistent_settings", event_log, CONNTRACE_E2E_CONN_MAX_AGE=str(conn_max_age)
    )
    with serving(env, server_log) as port, ThreadPoolExecutor(CONCURRENCY) as pool:
        answers = list(pool.map(lambda _: client.get(port, "/async/count/"), range(REQUESTS)))
        live = client.get(port, "/live/")
    assert all(answer[0] == 200 for answer in answers), answers
    events = [json.loads(line) for line in event_log.read_text().splitlines()]
    return events, json.loads(live[1]), server_log.read_text(errors="replace")


def test_conn_max_age_60_under_asgi_warns_once_and_live_shows_the_idle_executor_connections(tmp_path):
    events, live, uvicorn_said = serve_some_requests(tmp_path, 60)
    [warning] = named(events, "asgi_persistent_connections")
    assert warning["level"] == "warning"
    assert (warning["aliases"], warning["conn_max_age"]) == (["default"], {"default": 60})
    assert "CONN_MAX_AGE = 0" in warning["hint"] and "pool" in warning["hint"]
    # Django runs each request's ORM calls in a thread of that request's own (asgiref's
    # ThreadSensitiveContext), which ends with it: every session stays open, its thread gone,
    # until the garbage collector drops the wrapper (connection_abandoned).
    abandoned = named(events, "connection_abandoned")
    assert len(live) + len(abandoned) == REQUESTS, uvicorn_said
    assert len(live) >= REQUESTS // 2
    assert len({record["thread"] for record in live}) == len(live)
    assert all(record["thread"].startswith("ThreadPoolExecutor") for record in live)
    assert [record["thread_alive"] for record in live] == [False] * len(live)
    assert all(record["idle_s"] >= 0 and record["state"] == "open" for record in live)
    others = [e["event"] for e in events if e["level"] != "debug"]
    assert set(others) <= {"asgi_persistent_connections", "connection_abandoned"}, "no error"
    assert named(events, "connection_held_long") == []


def test_conn_max_age_0_under_asgi_says_nothing(tmp_path):
    events, live, _ = serve_some_requests(tmp_path, 0)
    assert named(events, "asgi_persistent_connections") == []
    assert live == []
    assert not [e for e in events if e["level"] != "debug"], "no warning, error or internal error"
