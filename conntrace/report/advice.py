"""What a problem is called, which line is its culprit, and what to do: one small table per question.

A problem is an event of warning level or above (or an info-level note), and
its culprit is the application's line that explains it: the line that closed
the driver connection behind Django's back when the event names one, the
``with transaction.atomic():`` that holds a connection, otherwise the line that
opened the connection.
"""

from __future__ import annotations

from typing import Any, Optional

from conntrace.names import Cause, Event

# Events that are problems (or notes, at info level) wherever they appear.
PROBLEM_EVENTS = frozenset(
    {
        Event.CONNECTION_OPEN_AT_FORK,
        Event.CONNECTION_FORK_INHERITED,
        Event.CONNECTION_INHERITED_USED,
        Event.CONNECTION_DOUBLE_CLOSE,
        Event.CONNECTION_CLOSE_FAILED,
        Event.CONNECTION_ABANDONED,
        Event.CONNECTION_LOST,
        Event.CONNECTION_HELD_LONG,
        Event.POOL_EXHAUSTED,
        Event.ASGI_PERSISTENT_CONNECTIONS,
        Event.SETTINGS_INVALID,
        Event.INTERNAL_ERROR,
    }
)

# What the summary and the page say when nothing the input holds is conntrace's.
NO_EVENTS = (
    "No conntrace events in the input: is it the output of the conntrace logger, as JSON lines "
    "(structlog's JSONRenderer)? See the README's Logging set-up."
)
NO_PROBLEMS = "No problems found."

FORK = (
    "Remove the query at this line from import time (or close connections before the server forks); "
    "check with: manage.py conntrace_preflight"
)
# (event, cause or None) -> what to do, in one line.
WHAT_TO_DO: dict[tuple[str, Optional[str]], str] = {
    (Event.CONNECTION_OPEN_AT_FORK, None): FORK,
    (Event.CONNECTION_FORK_INHERITED, None): FORK,
    (Event.CONNECTION_INHERITED_USED, None): FORK + "; use FORK_POLICY 'reset'",
    (Event.CONNECTION_DOUBLE_CLOSE, None): (
        "Do not close the driver connection yourself (connection.connection.close()): "
        "call django.db.connection.close()"
    ),
    (Event.CONNECTION_CLOSE_FAILED, None): "The driver raised while closing: see error_type and error",
    (Event.CONNECTION_ABANDONED, None): (
        "Close the connection before dropping its wrapper (threads: connection.close() before they end)"
    ),
    (Event.CONNECTION_HELD_LONG, None): (
        "Keep transactions and pool checkouts short: nothing slow or blocking inside atomic()"
    ),
    (Event.POOL_EXHAUSTED, None): "Release connections sooner, or raise the pool's max_size",
    (Event.ASGI_PERSISTENT_CONNECTIONS, None): "Under ASGI set CONN_MAX_AGE = 0, or use a connection pool",
    (Event.SETTINGS_INVALID, None): "Fix the CONNTRACE setting as its hint says",
    (Event.INTERNAL_ERROR, None): "conntrace itself failed (the database call went on): report it",
    (Event.CONNECTION_LOST, Cause.TERMINATED_BY_ADMIN): (
        "Someone ran pg_terminate_backend() on this session: find who (a cron job, a DBA, a deploy script)"
    ),
    (Event.CONNECTION_LOST, Cause.SERVER_SHUTDOWN): "The server restarted: set CONN_HEALTH_CHECKS = True",
    (Event.CONNECTION_LOST, Cause.SERVER_CRASH): "Another server process crashed: read the server's log",
    (Event.CONNECTION_LOST, Cause.IDLE_SESSION_TIMEOUT): (
        "Keep CONN_MAX_AGE below the server's idle_session_timeout, or set CONN_HEALTH_CHECKS = True"
    ),
    (Event.CONNECTION_LOST, Cause.IDLE_IN_TRANSACTION_TIMEOUT): (
        "A transaction stayed idle too long: nothing slow inside atomic()"
    ),
    (
        Event.CONNECTION_LOST,
        Cause.POOLER,
    ): "pgbouncer ended the session: compare its timeouts with CONN_MAX_AGE",
    (Event.CONNECTION_LOST, Cause.FORKED_SIBLING): FORK,
    (Event.CONNECTION_LOST, Cause.CLOSED_BY_APPLICATION): (
        "Do not close the driver connection yourself: call django.db.connection.close()"
    ),
    (Event.CONNECTION_LOST, Cause.NETWORK): "The socket broke: check the network and the pooler in between",
    (Event.CONNECTION_LOST, None): "The session ended under the application: read cause_evidence",
}


def kind(event: dict[str, Any]) -> str:
    """Return the problem's kind: the event name, with the cause of a lost connection."""
    name = event["event"]
    cause = event.get("cause")
    return f"{name}:{cause}" if cause and name == Event.CONNECTION_LOST else name


def culprit(event: dict[str, Any]) -> str:
    """Return the line (or the setting, or the pool) a problem is grouped under."""
    name = event["event"]
    if name == Event.SETTINGS_INVALID:
        return f"CONNTRACE[{event.get('key')!r}]"
    if name == Event.INTERNAL_ERROR:
        return f"conntrace ({event.get('where')})"
    if name == Event.ASGI_PERSISTENT_CONNECTIONS:
        return "DATABASES CONN_MAX_AGE under ASGI"
    if name == Event.POOL_EXHAUSTED:
        return f"pool of alias {event.get('alias')!r}"
    line = event.get("driver_closed_in") or (
        event.get("transaction_started_in") if name == Event.CONNECTION_HELD_LONG else None
    )
    return str(line or event.get("opened_in") or "unknown line")


def what_to_do(event: dict[str, Any]) -> str:
    """Return the one line that says what to do about ``event``."""
    name = event["event"]
    return WHAT_TO_DO.get((name, event.get("cause"))) or WHAT_TO_DO.get((name, None), "")


def stack(event: dict[str, Any]) -> list[str]:
    """Return the stack that shows the culprit (the close, the transaction or the opening)."""
    for key in ("driver_closed_stack", "transaction_stack", "opened_stack"):
        value = event.get(key)
        if isinstance(value, list) and value:
            return [str(frame) for frame in value]
    return []
