"""What the server tests do to the end-to-end project from outside: requests that check their own answer.

``/echo/<token>/`` asks PostgreSQL to return the request's own token (see
``tests/e2e/shop/views.py``): on a session shared by several workers, a
response can carry another request's token with status 200. The events a
server's processes wrote (``tests/e2e/prefork_settings.py``) are read back here too.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

OK = "ok"
WRONG_BODY = "wrong_body"  # another request's answer, with status 200
NOT_SENT = "not_sent"  # the load's time bound had passed

# The project's import-time query (tests/e2e/branding/site.py), as conntrace names it in opened_in.
IMPORT_TIME_LINE = "tests/e2e/branding/site.py:9 in <module>"


def echo(port: int, index: int, deadline: float) -> str:
    """Send one request; return ``ok``, ``wrong_body``, ``status_<n>``, ``error_<type>`` or ``not_sent``."""
    if time.monotonic() > deadline:
        return NOT_SENT
    token = f"r{index}-{uuid.uuid4().hex[:12]}"
    answer = get(port, f"/echo/{token}/")
    if isinstance(answer, str):
        return answer
    return OK if answer == (200, token) else (WRONG_BODY if answer[0] == 200 else f"status_{answer[0]}")


def get(port: int, path: str) -> tuple[int, str] | str:
    """GET ``path`` on the loopback server; return (status, body), or ``error_<type>`` if it failed."""
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        client.request("GET", path)
        response = client.getresponse()
        return response.status, response.read().decode(errors="replace")
    except Exception as exc:
        return f"error_{type(exc).__name__}"
    finally:
        client.close()


def load(port: int, requests: int, concurrency: int, within_s: float = 40) -> Counter[str]:
    """Send ``requests`` echo requests, ``concurrency`` at a time, within ``within_s`` s; count outcomes."""
    deadline = time.monotonic() + within_s
    with ThreadPoolExecutor(concurrency) as pool:
        return Counter(pool.map(lambda index: echo(port, index, deadline), range(requests)))


def read_events(path: Path) -> list[dict[str, Any]]:
    """Return the structlog events a server's processes wrote as JSON lines (none if nothing was written)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def by_process(events: list[dict[str, Any]], name: str) -> dict[int, list[dict[str, Any]]]:
    """Group the events called ``name`` by the process that emitted them."""
    grouped: dict[int, list[dict[str, Any]]] = {}
    for event in events:
        if event["event"] == name:
            grouped.setdefault(event["process"], []).append(event)
    return grouped
