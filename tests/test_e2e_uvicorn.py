"""Async views under a real uvicorn: every connection names the view's ``await`` line.

uvicorn serves ``tests/e2e/asgi.py`` (started with the virtualenv's
``bin/uvicorn`` launcher, as in production); its views call the ORM's async
methods, which asgiref runs in a worker thread whose own stack holds only
Django, asgiref and the executor. conntrace's ``connection_opened`` events,
rendered as JSON lines at debug level, must still name the view's line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import named
from tests.e2e import client
from tests.e2e import db as e2e_db
from tests.support import free_port, stop, wait_listening

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parent.parent
VIEWS = ROOT / "tests" / "e2e" / "async_views.py"
DATABASE = "conntrace_e2e_async"
REQUESTS = 40
CONCURRENCY = 4
LOAD_DEADLINE_S = 30
UVICORN = Path(sys.executable).with_name("uvicorn")


def view_line(marker: str, view: str) -> str:
    """Return ``opened_in`` naming the line of ``tests/e2e/async_views.py`` marked ``# opens: <marker>``."""
    lines = VIEWS.read_text().splitlines()
    [number] = [n for n, text in enumerate(lines, 1) if text.endswith(f"# opens: {marker}")]
    return f"tests/e2e/async_views.py:{number} in {view}"


def request(port: int, deadline: float, index: int) -> str:
    """Send one request, a count (even ``index``) or a create; return ``count``, ``create`` or what failed."""
    if time.monotonic() > deadline:
        return "not_sent"
    token = f"t{index}-{uuid.uuid4().hex[:12]}"
    kind, path = ("count", "/async/count/") if index % 2 == 0 else ("create", f"/async/create/{token}/")
    answer = client.get(port, path)
    if isinstance(answer, str):
        return answer
    status, body = answer
    if status != 200:
        return f"status_{status}"
    expected = body.isdigit() if kind == "count" else body == token
    return kind if expected else f"wrong_body_{kind}"


def project_env(settings_module: str, event_log: Path, **extra: str) -> dict[str, str]:
    """Return the environment of a uvicorn serving ``settings_module``, its events in ``event_log``."""
    return dict(
        os.environ,
        DJANGO_SETTINGS_MODULE=settings_module,
        PYTHONPATH=str(ROOT),
        CONNTRACE_E2E_DBNAME=DATABASE,
        CONNTRACE_E2E_LOG=str(event_log),
        **extra,
    )


@contextmanager
def serving(env: dict[str, str], server_log: Path) -> Iterator[int]:
    """Run uvicorn with the virtualenv's launcher on a free loopback port; give the port, stop it after."""
    port = free_port()
    command = [
        str(UVICORN), "tests.e2e.asgi:application", "--host", "127.0.0.1", "--port", str(port),
        "--loop", "asyncio", "--lifespan", "off", "--no-access-log",
    ]  # fmt: skip
    with open(server_log, "wb") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(port, server, name="uvicorn", output=server_log.read_text)
            yield port
        finally:
            stop(server)  # SIGTERM: uvicorn's graceful shutdown


def test_every_connection_opened_by_an_async_view_names_the_views_await_line(tmp_path):
    e2e_db.create(DATABASE)
    event_log, server_log = tmp_path / "events.jsonl", tmp_path / "uvicorn.log"
    env = project_env("tests.e2e.async_settings", event_log)
    with serving(env, server_log) as port, ThreadPoolExecutor(CONCURRENCY) as pool:
        deadline = time.monotonic() + LOAD_DEADLINE_S
        outcomes = Counter(pool.map(lambda i: request(port, deadline, i), range(REQUESTS)))
    events = [json.loads(line) for line in event_log.read_text().splitlines()]
    uvicorn_said = server_log.read_text(errors="replace")

    assert outcomes == Counter(count=REQUESTS // 2, create=REQUESTS // 2), uvicorn_said
    assert not re.search(r"Traceback|ERROR", uvicorn_said), uvicorn_said
    opened = named(events, "connection_opened")
    # CONN_MAX_AGE = 0: each request opens one connection, in a worker thread, at its view's await.
    assert Counter(event["opened_in"] for event in opened) == {
        view_line("acount", "count"): REQUESTS // 2,
        view_line("acreate", "create"): REQUESTS // 2,
    }
    assert all(event["opened_stack"] == [event["opened_in"]] for event in opened)
    assert all(event["thread"].startswith("ThreadPoolExecutor") for event in opened)
    assert len(named(events, "connection_closed")) == REQUESTS
    assert not [e for e in events if e["level"] != "debug"], "no warning, error or internal error"
